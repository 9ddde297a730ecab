"""An update is committed only once every app it started passed its health window, on a real engine.

The cases of issue 11: a version whose added app crash-loops (runs a second, exits 1, is
restarted) must not be committed because its container happened to be running when looked at;
an app with one-shot services (exited 0) and one with services compose does not create (a
profile not active, no replicas) must be accepted, and without waiting out a timeout.

Releases, under a hardware id of their own: v1 = shellhttpd v1 + pair v1; v2 = v1 + crashloop;
v3 = v1 + oneshot; v4 = v1 + extras.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from support import Device, device_running, health_window_drop_in, publish, sample_page
from test_crash import node_state, start_apply, wait_for

pytestmark = [pytest.mark.factory, pytest.mark.docker]

HWID = "health-linux"
TAG = "health"
BASE = {"shellhttpd": "shellhttpd/v1", "pair": "pair/v1"}
RELEASES = {1: BASE, 2: {**BASE, "crashloop": "crashloop/v1"}, 3: {**BASE, "oneshot": "oneshot/v1"},
            4: {**BASE, "extras": "extras/v1"}}
WINDOW_S = 4


@pytest.fixture(scope="module")
def health_release(factory) -> None:
    for version, apps in RELEASES.items():
        publish(factory.home.root, version, apps, TAG, "--hwid", HWID)


@pytest.fixture
def device(factory, health_release, engine, tmp_path: Path) -> Iterator[Device]:
    """A device of the health release running v1, its health window WINDOW_S seconds."""
    with device_running(factory, engine, tmp_path, TAG, HWID, 1, WINDOW_S) as device:
        yield device


def containers(engine: docker.DockerClient, app: str) -> dict[str, dict]:
    """service -> the engine's State of its container, for compose project `app`."""
    return {c.labels["com.docker.compose.service"]: c.attrs["State"]
            for c in engine.containers.list(all=True, filters={"label": f"com.docker.compose.project={app}"})}


def test_an_added_app_that_crash_loops_is_not_committed(device: Device, engine) -> None:
    done = device.run("apply", "2")
    assert done.returncode != 0, "a crash-looping app was committed: " + done.stderr
    assert "crasher" in done.stderr and "restart" in done.stderr, done.stderr
    status = device.json("status", "--json")
    assert status["current"]["version"] == 1
    assert "crashloop" not in {c.labels.get("com.docker.compose.project") for c in engine.containers.list(all=True)}
    assert "v1" in sample_page()


def test_an_app_with_one_shot_services_is_accepted_once_they_exited_0(device: Device, engine) -> None:
    began = time.monotonic()
    done = device.run("apply", "3")
    took = time.monotonic() - began
    assert done.returncode == 0, done.stdout + done.stderr
    assert took < 30, f"the update waited {took:.0f} s: a one-shot was waited for as if it should run"
    state = containers(engine, "oneshot")
    assert (state["init"]["Status"], state["init"]["ExitCode"]) == ("exited", 0)
    assert (state["hello"]["Status"], state["hello"]["ExitCode"]) == ("exited", 0)
    assert state["worker"]["Status"] == "running"
    status = device.json("status", "--json")
    assert status["current"]["version"] == 3 and status["in_progress"] is None
    assert {a["name"]: a["state"] for a in status["apps"]}["oneshot"] == "running"
    assert device.run("apply", "3").stdout.startswith("Already running"), "a finished one-shot needs no repair"


def test_services_compose_does_not_create_are_not_waited_for(device: Device, engine) -> None:
    done = device.run("apply", "4")
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(containers(engine, "extras")) == {"main"}, "no container for the profile's or the unscaled service"
    status = device.json("status", "--json")
    assert status["current"]["version"] == 4
    assert device.run("apply", "4").stdout.startswith("Already running")


def test_a_signal_inside_the_window_stops_the_wait_at_once_and_resume_watches_again(device: Device, tmp_path) -> None:
    health_window_drop_in(tmp_path, 20)  # the same drop-in, a longer window for this update
    process = start_apply(device, "4")
    wait_for(lambda: node_state(device, "healthy:extras") == "running", 120, "the window")
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 143 and time.monotonic() - began < 2.0, "the wait is cut short"
    assert node_state(device, "healthy:extras") == "pending", "stopped, not failed: the window is watched again"
    done = device.run("resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert device.json("status", "--json")["current"]["version"] == 4
