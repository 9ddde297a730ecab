"""Helpers the tests share: run the real commands, register devices, publish releases."""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nothing on 127.0.0.1 holds right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def claim_engine() -> IO | None:
    """Under pytest-xdist, point DOCKER_HOST at an engine of this worker's own, before anything
    reads it (fixtures, and the fioup-flow and compose processes, which inherit it): tests empty
    the engine they run on. scripts/test lists one engine per worker in FIOUP_FLOW_TEST_ENGINES; a
    worker holds a lock beside the socket of the one it took for as long as it lives, so a worker
    xdist starts in place of one that crashed takes the engine the dead one freed. Returns the
    lock (kept open), None outside a worker."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or not os.environ.get("FIOUP_FLOW_TEST_ENGINES"):
        return None
    for host in os.environ["FIOUP_FLOW_TEST_ENGINES"].split():
        lock = open(Path(host.removeprefix("unix://")).with_name("worker.lock"), "w")  # noqa: SIM115 - held
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        os.environ["DOCKER_HOST"] = host
        return lock
    raise RuntimeError(f"no free engine for worker {os.environ['PYTEST_XDIST_WORKER']} among "
                       f"{os.environ['FIOUP_FLOW_TEST_ENGINES']}: scripts/test starts one per worker")


# The sample shellhttpd publishes ${SHELLHTTPD_PORT:-18080}. Compose sees no variable of
# fioup-flow's environment, only those the device's `[compose_env]` sets: every test device gets
# this port, the test run's own, which keeps the app clear of anything else on this machine.
SHELLHTTPD_PORT = int(os.environ.get("SHELLHTTPD_PORT") or free_port())


def compose_env_drop_in(folder: Path, **variables: str) -> Path:
    """A config drop-in (as in /etc/sota/conf.d) giving compose SHELLHTTPD_PORT and `variables`."""
    values = {"SHELLHTTPD_PORT": str(SHELLHTTPD_PORT), **variables}
    path = folder / "compose-env.toml"
    path.write_text("[compose_env]\n" + "".join(f"{name} = {json.dumps(value)}\n" for name, value in values.items()))
    return path


# Every test device watches the apps an update starts for this long (`pacman.health_window`), not
# the default 15 s: long enough to see each up, short enough for a suite of many updates. The file
# sorts first, so that any drop-in a test adds for the key wins.
TEST_HEALTH_WINDOW_S = 1


def health_window_drop_in(folder: Path, seconds: float, name: str = "health-window.toml") -> Path:
    """A config drop-in setting `pacman.health_window`."""
    path = folder / name
    path.write_text(f"[pacman]\nhealth_window = {seconds}\n")
    return path


def test_defaults_drop_in(folder: Path) -> Path:
    return health_window_drop_in(folder, TEST_HEALTH_WINDOW_S, "00-test-defaults.toml")


def running_images(engine) -> dict[str, str]:
    """project/service -> image ID, of every running container: what runs, in the engine's words."""
    return {f"{c.labels['com.docker.compose.project']}/{c.labels['com.docker.compose.service']}": c.attrs["Image"]
            for c in engine.containers.list()}


def sample_page() -> str:
    """What the sample shellhttpd app serves right now."""
    return requests.get(f"http://127.0.0.1:{SHELLHTTPD_PORT}/", timeout=5).text


def fioup_flow(args: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `fioup-flow` as a person would, with network retries kept short for tests."""
    full_env = {**os.environ, "FIOUP_FLOW_RETRY_SECONDS": "3", **(env or {})}
    return subprocess.run([str(BIN / "fioup-flow"), *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, stdin=subprocess.DEVNULL)


def last_json(done: subprocess.CompletedProcess) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class Device:
    """A registered device: its sota dir, and `run(...)` to call `fioup-flow` on it."""

    name: str
    sota_dir: Path
    drop_ins: list[Path] = field(default_factory=list)  # more config files or folders, like /etc/sota/conf.d

    @property
    def cfg(self) -> Path:
        return self.sota_dir / "sota.toml"

    def run(self, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        cfg_dirs = ",".join(str(p) for p in [self.cfg, *self.drop_ins])
        return fioup_flow(["-c", cfg_dirs, *args], timeout=timeout, env=env)

    def json(self, *args: str) -> Any:
        return last_json(self.run(*args))


def image_roots(home: Path, folder: Path) -> Path:
    """What a device's OS image ships: the factory's TUF roots (`fioup-flow-factory roots`) in
    `folder/tuf` (as /usr/lib/sota/tuf), and a config file pointing the device at them (as a
    drop-in in /usr/lib/sota/conf.d would); returns that file."""
    done = subprocess.run([str(BIN / "fioup-flow-factory"), "roots", "--home", str(home), "--out",
                           str(folder / "tuf")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    drop_in = folder / "image-roots.toml"
    drop_in.write_text(f'[storage]\nuptane_metadata_path = "{folder / "tuf"}"\n')
    return drop_in


def register(info: dict, sota_dir: Path, name: str | None = None, *extra: str,
             env: dict | None = None) -> subprocess.CompletedProcess:
    """`fioup-flow register` against a factory whose `up` printed `info`."""
    return fioup_flow(["register", "--factory", info["factory"], "--server", info["api"],
                       "--token", info["registration_token"], "--ca", info["ca"],
                       "--name", name or f"dev-{uuid.uuid4().hex[:8]}", "--sota-dir", str(sota_dir), *extra], env=env)


def new_device(info: dict, sota_dir: Path, *extra: str) -> Device:
    """A device registered with the factory `info` describes, its image's roots beside its sota dir."""
    name = f"dev-{uuid.uuid4().hex[:8]}"
    done = register(info, sota_dir, name, *extra)
    assert done.returncode == 0, done.stderr
    image = image_roots(Path(info["home"]), sota_dir.with_name(f"{sota_dir.name}-image"))
    return Device(name, sota_dir, [image, compose_env_drop_in(sota_dir), test_defaults_drop_in(sota_dir)])


@contextmanager
def fresh_device(factory, engine, sota_dir: Path, tag: str, hwid: str | None = None) -> Iterator[Device]:
    """A device registered for the Targets of `tag` (and `hwid`), on an engine with nothing on it,
    left empty again afterwards."""
    clean_engine(engine)
    try:
        yield new_device(factory.info, sota_dir, "--tag", tag, *(("--hwid", hwid) if hwid else ()))
    finally:
        clean_engine(engine)


@contextmanager
def device_running(factory, engine, folder: Path, tag: str, hwid: str, version: int,
                   health_window: float) -> Iterator[Device]:
    """A fresh device of the Targets of `tag` and `hwid`, watching the apps an update starts for
    `health_window` seconds, already running Target `version`; the engine emptied after."""
    with fresh_device(factory, engine, folder / "sota", tag, hwid) as device:
        device.drop_ins.append(health_window_drop_in(folder, health_window))
        done = device.run("apply", str(version))
        assert done.returncode == 0, done.stdout + done.stderr
        yield device


def publish(home: Path, version: int, apps: dict[str, str], tag: str, *extra: str) -> Any:
    """`fioup-flow-factory publish` of sample apps ({name: "shellhttpd/v1"}) as Target `version`."""
    args = [str(BIN / "fioup-flow-factory"), "publish", "--home", str(home), "--version", str(version),
            "--tag", tag, *extra]
    for name, sample in apps.items():
        args += ["--app", f"{name}=sample:{sample}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def clean_engine(engine) -> None:
    """Leave a Docker engine as a fresh device's: no containers, networks, volumes or images."""
    for container in engine.containers.list(all=True):
        container.remove(force=True)
    engine.networks.prune()
    engine.volumes.prune()
    for image in engine.images.list():
        engine.images.remove(image.id, force=True)


def largest_partial(device: Device) -> int:
    """The bytes the largest partial download of `device` holds now (0 with none)."""
    sizes = []
    for partial in (device.sota_dir / "reset-apps" / "ingest").glob("*/data"):
        try:
            sizes.append(partial.stat().st_size)
        except FileNotFoundError:  # committed meanwhile
            pass
    return max(sizes, default=0)


_BLOB_GET = re.compile(r'http.request.method=GET .*http.request.uri="/v2/[^"]+/blobs/(sha256:[0-9a-f]{64})".*'
                       r'http.response.written=(\d+)')


def registry_blob_gets(home) -> list[tuple[str, int]]:
    """(digest, bytes the registry wrote) of every blob GET the factory's registry answered so far,
    from its own log: bytes counted where they leave, not where they arrive."""
    text = home.log_file("registry").read_text(errors="replace")
    return [(m[1], int(m[2])) for m in _BLOB_GET.finditer(text)]
