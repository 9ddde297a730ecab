"""The factory's background processes: started detached, tracked by pid files, stopped by pid.

`up` returns while the factory keeps running, so each service (factory-server, registry) runs in
its own session with its output in `home.log_file(service)` and its pid in
`home.pid_file(service)`. A later `down`/`status` (another process) finds it again only
through that pid file, so the file is written atomically and a stale one counts as not running:
the process died, is a zombie, or the pid now belongs to another process (pids are reused,
after a reboot above all), which the process's start time, kept beside the pid, tells apart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import requests

from fioup_flow.durable import write_atomic
from fioup_flow.errors import FioupFlowError
from fioup_flow.factory.home import FactoryHome

STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.05


class ServiceStartError(FioupFlowError):
    """A factory service did not come up (its log says why)."""


def start_process(home: FactoryHome, service: str, argv: list[str], env: dict | None = None) -> int:
    """Start `argv` in the background as `service` unless it runs already; returns its pid.

    `env` adds to (overrides) this process's environment.
    """
    running = _pid(home, service)
    if running is not None:
        return running
    log_path = home.log_file(service)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    home.pid_file(service).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
        child = subprocess.Popen(argv, stdin=devnull, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, **(env or {})}, cwd=home.root, start_new_session=True)
    write_atomic(home.pid_file(service), f"{child.pid} {_start_time(child.pid)}\n".encode(), mode=0o644)
    return child.pid


def stop_process(home: FactoryHome, service: str, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM the service (SIGKILL after `timeout`); True if it was running."""
    pid = _pid(home, service)
    if pid is not None:
        _signal(pid, signal.SIGTERM)
        if not _wait(lambda: not _alive(pid), timeout):
            _signal(pid, signal.SIGKILL)
            _wait(lambda: not _alive(pid), timeout)
    home.pid_file(service).unlink(missing_ok=True)
    return pid is not None


def process_running(home: FactoryHome, service: str) -> bool:
    return _pid(home, service) is not None


def service_pid(home: FactoryHome, service: str) -> int | None:
    """The pid of the running service, or None."""
    return _pid(home, service)


def wait_for_url(url: str, timeout: float, ca: Path, home: FactoryHome | None = None,
                 service: str | None = None) -> None:
    """Return once `url` gives any HTTP answer over TLS verified with `ca` (so it is ours).

    A port that merely accepts connections could belong to some other program; a TLS server
    whose certificate chains to the factory CA is this factory's. Given `home` and `service`, fails
    at once (with the log's tail) if that process has died; raises ServiceStartError after `timeout`.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(url, verify=str(ca), timeout=5)
            return
        except requests.RequestException as exc:
            problem = exc
        if home is not None and service is not None and not process_running(home, service):
            raise ServiceStartError(f"{service} exited while starting:\n{log_tail(home, service)}")
        if time.monotonic() > deadline:
            raise ServiceStartError(f"{service or url} does not answer at {url} after {timeout:g}s: {problem}")
        time.sleep(POLL_INTERVAL)


def log_tail(home: FactoryHome, service: str, lines: int = 20) -> str:
    try:
        return "\n".join(home.log_file(service).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _pid(home: FactoryHome, service: str) -> int | None:
    try:
        pid_text, started = home.pid_file(service).read_text().split()[:2]
        pid = int(pid_text)
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) and _start_time(pid) == started else None


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards), or None."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    """When the process started (clock ticks since boot): a pid plus this names one process."""
    fields = _proc_stat(pid)
    return fields[19] if fields else None


def _alive(pid: int) -> bool:
    """Alive and not a zombie (a dead child not yet reaped still has a pid)."""
    fields = _proc_stat(pid)
    if fields is None:
        return False
    if fields[0] in ("Z", "X"):
        _reap(pid)
        return False
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _signal(pid: int, sig: int) -> None:
    """Signal the service's whole process group (it leads its own session), children included."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _wait(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True
