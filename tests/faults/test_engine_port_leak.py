"""Docker 20.10 leaks a host port when the power goes while a container that publishes it starts:
fioup-flow tells that leak from a real conflict and frees it with the device's restart command.

The leak is made for real: a container with a published port and a restart policy is started on
an engine of the test's own, and the engine goes down with the power (PrivateEngine.cut) a
random moment later, until a boot finds the port held by an orphaned `docker-proxy`. On Debian
12's engine about one such cut in four leaks; an engine that leaks none in TRIES cuts cannot test
the cure: the test skips, and says so in the summary even under CI (`allowed_skip`).
"""

from __future__ import annotations

import io
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "lib"))
from private_engine import PrivateEngine  # noqa: E402
from support import free_port  # noqa: E402

from fioup_flow.factory.images import BlobDir, ImageSpec, build_image, docker_save_tar  # noqa: E402
from fioup_flow.task import Node, TaskContext  # noqa: E402
from tasks import start  # noqa: E402
from tasks.appstate import PROJECT_LABEL, SERVICE_LABEL  # noqa: E402
from tasks.portleak import EngineRestart, HostPort, leaked_ports  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.timeout(400)]

TRIES = 40
IMAGE = "leak:1"


@pytest.fixture
def power(tmp_path: Path) -> Iterator[PrivateEngine]:
    """An engine of the test's own (in a short folder, as containerd's sockets need), with an image."""
    folder = Path(tempfile.mkdtemp(prefix="fioup-flow-engine-"))
    with PrivateEngine(folder) as engine:
        image = build_image(ImageSpec("leak", cmd=["sleep", "3600"]), BlobDir(tmp_path / "blobs"))
        tar = io.BytesIO()
        docker_save_tar(image, IMAGE, tar)
        engine.client().images.load(tar.getvalue())
        yield engine
    shutil.rmtree(folder, ignore_errors=True)


def start_in_a_power_cut(power: PrivateEngine, name: str, port: int) -> str:
    """Start a container publishing `port`, cut the power mid-start, boot; the engine's refusal
    to start it again, or "" if it runs."""
    client = power.client()
    network = client.networks.create(f"{name}_default", driver="bridge")  # as compose makes one per app

    def start() -> None:
        try:
            client.containers.run(IMAGE, name=name, detach=True, ports={"80/tcp": ("127.0.0.1", port)},
                                  restart_policy={"Name": "unless-stopped"}, network=network.name)
        except (docker.errors.DockerException, OSError):
            pass  # the power went

    threading.Thread(target=start, daemon=True).start()
    time.sleep(random.uniform(0.05, 0.6))
    power.cut()
    power.boot()
    time.sleep(1.5)  # the engine brings the container back, as its restart policy says, or fails to
    try:
        container = power.client().containers.get(name)
        if container.status != "running":
            container.start()
    except docker.errors.NotFound:
        return ""  # the cut came before the container existed
    except docker.errors.APIError as exc:
        return str(exc)
    return ""


def a_leak(power: PrivateEngine) -> tuple[str, int, str]:
    """Cut until a boot finds a port leaked: (container, port, the engine's refusal)."""
    for attempt in range(TRIES):
        name, port = f"web{attempt}", free_port()
        refused = start_in_a_power_cut(power, name, port)
        if "port is already allocated" in refused:
            return name, port, refused
    pytest.skip(f"this Docker engine leaked no port in {TRIES} power cuts")


@pytest.mark.allowed_skip(reason="the leak is Docker 20.10's, and random: an engine that never leaks leaves "
                                "the cure untested, which the summary says")
def test_a_port_the_engine_leaked_in_a_power_cut_is_told_apart_and_freed_by_one_restart(power) -> None:
    name, port, refused = a_leak(power)
    client = power.client()
    assert leaked_ports(client, refused) == [HostPort("127.0.0.1", port)], \
        "no container publishes it, and the listener is the engine's own orphaned docker-proxy"

    command = [sys.executable, str(ROOT / "scripts" / "lib" / "private_engine.py"), "restart", str(power.folder)]
    restart = EngineRestart(command, client)
    assert restart.frees(refused)

    container = power.client().containers.get(name)
    if container.status != "running":  # its restart policy may have brought it back already
        container.start()
    container.reload()
    assert container.status == "running"


def test_an_app_watched_while_fioup_flow_restarts_the_engine_is_watched_again_not_failed(power, tmp_path) -> None:
    """Freeing a leak for one app's start restarts the engine under every app: one in its health
    window went down with the engine and came back by its restart policy, which is not a failure."""
    client = power.client()
    # init: a `sleep` that a SIGTERM ends, so the engine's stop takes the container down at once
    container = client.containers.run(IMAGE, detach=True, name="watched-svc-1", restart_policy={"Name": "always"},
                                      init=True, labels={PROJECT_LABEL: "watched", SERVICE_LABEL: "svc"})
    node = Node("healthy:watched@sha256:1", start.HEALTHY, {
        "app": "watched", "uri": "hub.test/factory/watched@sha256:1", "timeout_s": 60, "window_s": 10,
        "services": {"svc": {"image": container.attrs["Image"]}}})
    restart = EngineRestart([sys.executable, str(ROOT / "scripts" / "lib" / "private_engine.py"), "restart",
                             str(power.folder)], client)
    outcome: list[BaseException | None] = []

    def watch() -> None:
        try:
            start.AppHealthy(tmp_path, client, restart).run(node, TaskContext(node, threading.Event()))
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            outcome.append(exc)

    started_at = container.attrs["State"]["StartedAt"]
    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(1)
    restart.restart()
    watcher.join(90)
    assert outcome == [None], outcome
    container.reload()
    assert container.status == "running" and started_at != container.attrs["State"]["StartedAt"], \
        "the container went down with the engine and came back: the watch saw it restart"
