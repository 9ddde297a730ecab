"""Compose runs with a stated environment: a `${NAME}` in an app's compose file reads what the device
sets on purpose (`[compose_env]`) and the app's own `.env`, never fioup-flow's own environment.

Judged from the engine: the app's container, its environment and labels, as compose made them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import BIN, Device, compose_env_drop_in, fresh_device

pytestmark = [pytest.mark.factory, pytest.mark.docker]

PROBE = Path(__file__).with_name("apps") / "envprobe"
TAG = "compose-env"
HWID = "compose-env-linux"
SECRET = "hunter2-of-the-agent"


@pytest.fixture(scope="module")
def probe_release(factory) -> None:
    done = subprocess.run([str(BIN / "fioup-flow-factory"), "publish", "--home", str(factory.home.root),
                           "--version", "1", "--tag", TAG, "--hwid", HWID, "--app", f"envprobe={PROBE}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def device(factory, probe_release, engine, tmp_path: Path) -> Iterator[Device]:
    with fresh_device(factory, engine, tmp_path / "sota", TAG, HWID) as fresh:
        yield fresh


def test_a_variable_of_the_agents_environment_never_reaches_an_apps_containers(device, engine) -> None:
    compose_env_drop_in(device.sota_dir, PROBE_GREETING="from the device")
    agent_env = {"PROBE_SECRET": SECRET, "PROBE_GREETING": "from the agent", "PROBE_BUNDLED": "from the agent",
                 "COMPOSE_PROJECT_NAME": "hijacked"}
    done = device.run("apply", "1", env=agent_env)
    assert done.returncode == 0, done.stderr

    (container,) = engine.containers.list()
    assert container.labels["com.docker.compose.project"] == "envprobe", "COMPOSE_PROJECT_NAME did not reach compose"
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    assert env["FROM_AGENT"] == "unset" and container.labels["probe.from-agent"] == "unset"
    assert SECRET not in json.dumps(container.attrs), "the agent's secret is nowhere in the container"
    assert env["FROM_DEVICE"] == "from the device", "the device's [compose_env] reaches compose"
    assert env["FROM_BUNDLE"] == "from the bundle", "the app's own .env still works"


def test_compose_env_may_not_point_compose_at_another_engine(device, engine) -> None:
    compose_env_drop_in(device.sota_dir, DOCKER_HOST="tcp://192.0.2.1:2375")
    done = device.run("apply", "1")
    assert done.returncode == 2, done.stderr
    assert "compose_env may not set DOCKER_HOST" in done.stderr
    assert engine.containers.list(all=True) == []
