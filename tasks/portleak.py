"""A host port the Docker engine keeps for a container it no longer has, and the one cure for it.

Docker 20.10 (Debian 12's `docker.io`), booting after a power cut that came while a container
with a published port was starting, maps the port again for the dead container's endpoint (a
`docker-proxy` listens on it), removes the endpoint, and never frees the port nor stops the
proxy. Every start of that app then fails with "Bind for IP:PORT failed: port is already
allocated" until the engine restarts. The power-cut harness meets it in 4 of 200 cuts that take the
engine down at a random moment of an update.

The same words come when another container of the engine publishes the port, which no restart
cures. So a port counts as leaked only when no container of the engine publishes it, and either
nothing listens on it or the listener is a `docker-proxy` for that very address and port.

Restarting the engine stops every container for a moment (unless the engine runs with
live-restore) and brings back those whose restart policy says so. That is the device owner's
call, so it is opt-in: `pacman.engine_restart_command` (`systemctl restart docker` on most
devices). It runs at most once per port in a run of fioup-flow: a restart that did not free the
port will not free it the second time.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import docker

from fioup_flow.errors import StartError

log = logging.getLogger(__name__)

ALLOCATED = re.compile(r"Bind for (?P<ip>[0-9a-fA-F.:\[\]]*):(?P<port>\d+) failed: port is already allocated")
COMMAND_TIMEOUT_S = 120.0
ENGINE_BACK_TIMEOUT_S = 60.0


@dataclass(frozen=True, order=True)
class HostPort:
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


def allocated_ports(text: str) -> set[HostPort]:
    """The host ports an engine error (or compose's output) says are already allocated."""
    return {HostPort(m["ip"].strip("[]") or "0.0.0.0", int(m["port"])) for m in ALLOCATED.finditer(text)}


def published_ports(engine: docker.DockerClient) -> set[int]:
    """The host ports the engine's containers publish, on any address: a port one of them holds
    is a real conflict, whatever the address."""
    return {p["PublicPort"] for c in engine.api.containers() for p in c.get("Ports") or () if p.get("PublicPort")}


def nobody_listens(port: HostPort) -> bool:
    """True when binding the port succeeds: no program holds it."""
    family = socket.AF_INET6 if ":" in port.ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT is nobody
        try:
            probe.bind((port.ip, port.port))
        except OSError:
            return False
    return True


def proxied_ports() -> set[HostPort]:
    """The host ports a `docker-proxy` process serves (its command line names them)."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:  # gone meanwhile
            continue
        if args[0].endswith("docker-proxy"):
            flags = dict(zip(args[1::2], args[2::2], strict=False))
            with contextlib.suppress(KeyError, ValueError):
                found.add(HostPort(flags["-host-ip"], int(flags["-host-port"])))
    return found


def leaked_ports(engine: docker.DockerClient, text: str) -> list[HostPort]:
    """The ports `text` says are allocated that only the engine's own bookkeeping holds."""
    published = published_ports(engine)
    candidates = [p for p in allocated_ports(text) if p.port not in published]
    proxied = proxied_ports() if candidates else set()
    return sorted(p for p in candidates if p in proxied or nobody_listens(p))


class EngineRestart:
    """Restarts the engine, through the device's own command, to free the ports it leaked."""

    def __init__(self, command: Sequence[str], engine: docker.DockerClient):
        self.command = tuple(command)
        self.engine = engine
        self._tried: set[HostPort] = set()
        self.restarts = 0  # how often this run restarted the engine: a watch over it knows why apps went down
        self._restarting = threading.Lock()  # held from the restart command until the engine answers

    def frees(self, text: str) -> bool:
        """If `text` (a failed start) names ports the engine leaked and no restart was tried for
        yet, restart the engine and wait until it answers: True when the start is worth trying again."""
        if not self.command:
            return False
        ports = [p for p in leaked_ports(self.engine, text) if p not in self._tried]
        if not ports:
            return False
        self._tried.update(ports)
        log.warning("the Docker engine holds %s for no container (a leak after a power cut); restarting it "
                    "with `%s`", ", ".join(map(str, ports)), shlex.join(self.command))
        self.restart()
        return True

    def restart(self) -> None:
        """Restart the engine with the device's command and wait until it answers again (by then
        it has started again the containers whose restart policy says so)."""
        with self._restarting:
            self.restarts += 1
            self._run()
            self._wait_for_engine()

    def wait_until_back(self) -> None:
        """Return once no restart is under way."""
        with self._restarting:
            pass

    def _run(self) -> None:
        what = f"the engine restart command `{shlex.join(self.command)}`"
        try:
            done = subprocess.run(self.command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StartError(f"{what} did not run: {exc}") from exc
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise StartError(f"{what} failed ({done.returncode}):\n{tail}")

    def _wait_for_engine(self) -> None:
        deadline = time.monotonic() + ENGINE_BACK_TIMEOUT_S
        while True:
            try:
                self.engine.ping()
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not back yet"
                if time.monotonic() > deadline:
                    raise StartError(f"the Docker engine did not answer within {ENGINE_BACK_TIMEOUT_S:.0f} s "
                                     f"of its restart: {exc}") from exc
                time.sleep(0.2)

