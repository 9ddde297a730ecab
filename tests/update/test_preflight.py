"""`apply` and `resume` check the engine and compose they depend on before they change anything,
and refuse what cannot work with a clear message and its own exit code: 7 when the engine does not
answer, 8 for an engine or a compose fioup-flow cannot drive.

Run on Debian 12's engine (20.10) and on Docker 26: `PATH="$(/work/shared/tools/newer-docker)":$PATH
scripts/test tests/update/test_preflight.py` (the containerd image store exists from Docker 24).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from support import Device

from fioup_flow.factory.devices import DeviceRecords
from fioup_flow.factory.images import BlobDir, ImageSpec, build_image, docker_save_tar
from tasks.compose import MIN_VERSION

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "lib"))
from private_engine import PrivateEngine  # noqa: E402

pytestmark = [pytest.mark.factory, pytest.mark.docker]

V1_SAYS = "docker-compose version 1.29.2, build unknown"  # Debian 12's `docker-compose` package
TOO_OLD = (MIN_VERSION[0], MIN_VERSION[1] - 1, 2)


def fake_compose(folder: Path, says: str) -> Path:
    """A fake standing in for a `docker-compose` this machine does not have (a v1, an old v2): it
    answers `version` with `says` and refuses anything else. Returns the log of its calls."""
    folder.mkdir(parents=True)
    calls = folder / "calls.log"
    (folder / "docker-compose").write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n[ "$1" = version ] && echo "{says}" && exit 0\n'
        'echo "not a compose fioup-flow can drive" >&2\nexit 1\n')
    (folder / "docker-compose").chmod(0o755)
    return calls


def logged_compose(folder: Path) -> Path:
    """The real compose behind a wrapper that logs each call. Returns the log of its calls."""
    folder.mkdir(parents=True)
    calls = folder / "calls.log"
    (folder / "docker-compose").write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {shutil.which("docker-compose")} "$@"\n')
    (folder / "docker-compose").chmod(0o755)
    return calls


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def assert_nothing_changed(factory, device: Device, engine: docker.DockerClient) -> None:
    """No container, no update frozen, nothing asked of the factory: refused before anything."""
    assert engine.containers.list(all=True) == []
    assert not (device.sota_dir / "flow" / "checkpoint").exists()
    records = DeviceRecords(factory.home)
    assert records.events(records.find(device.name)["uuid"]) == []


def test_a_stray_compose_v1_first_on_path_is_passed_over_for_a_v2_and_each_is_asked_its_version_once(
        device, engine, tmp_path: Path) -> None:
    v1 = fake_compose(tmp_path / "v1", V1_SAYS)
    v2 = logged_compose(tmp_path / "v2")
    done = device.run("apply", "1", env={"PATH": f"{v1.parent}:{v2.parent}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    assert calls(v1) == ["version"], "the v1 was asked its version, then never run"
    assert calls(v2).count("version") == 1 and any(" up -d " in call for call in calls(v2)), calls(v2)
    assert {c.labels["com.docker.compose.project"] for c in engine.containers.list()} == {"shellhttpd", "pair"}


def test_a_compose_v1_alone_is_refused_with_8_before_anything_changes(factory, device, engine, tmp_path) -> None:
    v1 = fake_compose(tmp_path / "v1", V1_SAYS)
    done = device.run("apply", "1", env={"PATH": str(v1.parent)})
    assert done.returncode == 8, done.stderr
    assert "no usable Docker Compose" in done.stderr and "Compose 1.29.2 is v1" in done.stderr
    assert calls(v1) == ["version"]
    assert_nothing_changed(factory, device, engine)


def test_a_compose_older_than_the_flags_fioup_flow_uses_is_refused_with_8(factory, device, engine, tmp_path) -> None:
    old = fake_compose(tmp_path / "old", "Docker Compose version v" + ".".join(map(str, TOO_OLD)))
    done = device.run("apply", "1", env={"PATH": str(old.parent)})
    assert done.returncode == 8, done.stderr
    assert f"Compose {'.'.join(map(str, TOO_OLD))} is older than {'.'.join(map(str, MIN_VERSION))}" in done.stderr
    assert_nothing_changed(factory, device, engine)


def test_an_engine_that_does_not_answer_is_refused_with_7_naming_its_address(factory, device, engine) -> None:
    nowhere = "unix:///nonexistent/docker.sock"
    done = device.run("apply", "1", env={"DOCKER_HOST": nowhere})
    assert done.returncode == 7, done.stderr
    assert f"the Docker engine at {nowhere} does not answer" in done.stderr
    assert_nothing_changed(factory, device, engine)
    assert device.run("resume", env={"DOCKER_HOST": nowhere}).returncode == 0, \
        "with no update in progress, resume at boot needs no engine"


@pytest.fixture
def containerd_store_engine(tmp_path: Path) -> Iterator[PrivateEngine]:
    """An engine of the test's own with Docker's containerd image store (no iptables: it runs nothing)."""
    folder = Path(tempfile.mkdtemp(prefix="fioup-flow-engine-"))  # short: containerd's socket paths
    config = tmp_path / "daemon.json"
    config.write_text(json.dumps({"features": {"containerd-snapshotter": True}}))
    with PrivateEngine(folder, ("--config-file", str(config), "--iptables=false")) as other:
        info = other.client().info()
        if ["driver-type", "io.containerd.snapshotter.v1"] not in (info.get("DriverStatus") or []):
            pytest.skip(f"dockerd {info['ServerVersion']} has no containerd image store (Docker 24 and later)")
        yield other
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.allowed_skip(reason="the containerd image store exists from Docker 24 on; Debian 12's engine is 20.10 "
                                  "(run the suite on Docker 26 with ../shared/tools/newer-docker to see it refused)")
def test_an_engine_with_the_containerd_image_store_is_refused_with_8(
        device, containerd_store_engine: PrivateEngine, tmp_path: Path) -> None:
    client = containerd_store_engine.client()
    image = build_image(ImageSpec("probe", cmd=["sleep", "3600"]), BlobDir(tmp_path / "blobs"))
    tar = io.BytesIO()
    docker_save_tar(image, "probe:1", tar)
    client.images.load(tar.getvalue())
    assert client.images.get("probe:1").id != image.config.digest, \
        "why it is refused: in this store an image's ID is not its config digest"

    done = device.run("apply", "1", env={"DOCKER_HOST": containerd_store_engine.host})
    assert done.returncode == 8, done.stderr
    assert "keeps images in containerd's image store" in done.stderr
    assert client.containers.list(all=True) == []
