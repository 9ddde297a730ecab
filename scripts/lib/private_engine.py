"""A private Docker engine, found by its folder: started, stopped, restarted, and cut as power cuts it.

The tests, the demo and the power-cut harness each run a dockerd of their own on a socket under a
folder of theirs, never the system's. All there is to know about an engine is in its folder
(socket, data, pidfile, log, address pool), and dockerd runs detached, as a system service does,
so another process can restart the engine one process started: the harness gives its devices
`python scripts/lib/private_engine.py restart DIR` as their `pacman.engine_restart_command`.

Each engine gets an address pool of its own (10.N.0.0/16, N unused on this machine, kept in the
folder so a restart finds its networks' subnets valid) and no default bridge, and its bridges are
deleted when it stops: bridge interfaces outlive the daemon that made them, and engines sharing
Docker's default pools run out of addresses.

A start that fails is followed by what fioup-flow's opt-in docker.service drop-in does on a device
(`fioup_flow/units/`): its script reads that start's log and, if dockerd panicked on the network
database a power cut left, moves the database aside; the engine is then started again.

    python scripts/lib/private_engine.py start|stop|restart DIR

A power cut stops everything in the same instant. `Freeze` does that for a set of processes (the
engine's, and the power-cut harness adds the updater's): a cgroup v1 freezer where the machine
has one, else SIGSTOP round after round; it then says which of them ran a step after the freeze
(their scheduler run time moved) and which processes of the set escaped it, and kills them all.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Self

import docker

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
RECOVER = files("fioup_flow") / "units" / "fioup-flow-docker-recover"  # what the docker.service drop-in runs
FREEZER = Path("/sys/fs/cgroup/freezer")
FREEZE_TIMEOUT_S = 3.0  # a freezer not settled by then gets SIGSTOP's help (see Freeze)
SIGSTOP_TIMEOUT_S = 10.0
POOL_CLAIMS = Path("/tmp/fioup-flow-pools")  # the address pools engines of this machine hold (see free_pool_octet)


class EngineDidNotStart(RuntimeError):
    """dockerd exited or did not answer in time; `log` is what it wrote during that start."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


def free_pool_octet(folder: Path) -> int:
    """N such that no route uses 10.N.0.0/16 and no other engine of this machine holds it, claimed
    for the engine in `folder`: on a shared machine, bridges left by other engines fill docker's
    default pools, and compose then cannot create an app's network. An engine with no network
    yet has no route, and engines started side by side (one per test worker) would pick alike:
    so each choice is claimed, as a link N in POOL_CLAIMS to its folder, under a lock; a claim
    whose folder no longer records N (removed, or chosen afresh) is free again."""
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=False).stdout
    taken = {int(m) for m in re.findall(r"^10\.(\d+)\.", routes, re.MULTILINE)}
    POOL_CLAIMS.mkdir(exist_ok=True)
    with open(POOL_CLAIMS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        held = {n for n in range(100, 250) if _recorded_octet(POOL_CLAIMS / str(n)) == n}
        octet = random.choice([n for n in range(100, 250) if n not in taken | held])
        claim = POOL_CLAIMS / str(octet)
        claim.unlink(missing_ok=True)
        claim.symlink_to(folder)
        (folder / "pool-octet").write_text(f"{octet}\n")
    return octet


def _recorded_octet(folder: Path) -> int | None:
    """The pool octet the engine folder `folder` records, None without one."""
    with contextlib.suppress(OSError, ValueError):
        return int((folder / "pool-octet").read_text())
    return None


def delete_bridges(octet: int) -> None:
    """Delete the bridges with an address in 10.`octet`.0.0/16: they outlive the engine that made them."""
    addresses = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False).stdout
    for line in addresses.splitlines():
        fields = line.split()
        if fields[1].startswith("br-") and fields[3].startswith(f"10.{octet}."):
            subprocess.run(["ip", "link", "del", fields[1]], capture_output=True, check=False)


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie is dead (nothing reaps dockerd's orphans on some machines)."""
    return _state(pid) not in ("Z", None)


class PrivateEngine:
    """A dockerd of our own. `cut()` takes it down the way a power cut does, containers and all;
    `boot()` starts it again on the same data, as a device boots."""

    def __init__(self, folder: Path, options: tuple[str, ...] = ()):
        """`options`: more dockerd flags, for an engine configured unlike a device's (a test's)."""
        self.folder = folder.absolute()
        self.options = options
        self.host = f"unix://{self.folder / 'docker.sock'}"
        self.pidfile = self.folder / "dockerd.pid"
        self.log = self.folder / "dockerd.log"
        self.recoveries = 0  # starts that needed the network database moved aside (see boot)

    def __enter__(self) -> Self:
        self.boot()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host)

    @property
    def octet(self) -> int:
        """The engine's address pool, 10.N.0.0/16: chosen at its first start, kept after."""
        if (octet := _recorded_octet(self.folder)) is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            octet = free_pool_octet(self.folder)
        return octet

    @property
    def started(self) -> bool:
        """True once the engine was started in this folder (it may have stopped since)."""
        return (self.folder / "pool-octet").exists()

    def pid(self) -> int | None:
        """dockerd's pid while it runs."""
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text())
            if alive(pid):
                return pid
        return None

    def boot(self) -> None:
        """Start dockerd, three tries: two engines starting at once race to create the same
        iptables chain, and the loser exits. An engine that runs and answers is left as it is."""
        if self.pid() is not None and self._answers():
            return
        for attempt in range(3):
            try:
                self._start()
                return
            except EngineDidNotStart as failed:
                if self.recover_network_db(failed):
                    self.recoveries += 1
                    self._start()
                    return
                if attempt == 2:
                    raise
                time.sleep(random.uniform(1, 4))

    def recover_network_db(self, failed: EngineDidNotStart) -> bool:
        """What a device with fioup-flow's docker.service drop-in does after a failed start: the
        drop-in's script moves the network database aside if the start's log shows dockerd's panic
        on it. True if it did (a restart, as systemd's, may succeed now)."""
        db = self.folder / "root" / "network" / "files" / "local-kv.db"
        if not db.exists():
            return False
        subprocess.run(["sh", str(RECOVER), "--data-root", str(self.folder / "root"), "--log", "-"],
                       input=failed.log, text=True, stdout=subprocess.DEVNULL, check=False)  # its line to stderr
        return not db.exists()

    def _start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pidfile.unlink(missing_ok=True)  # a dead engine's: dockerd refuses to start beside it
        began = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            subprocess.run(
                ["setsid", "--fork", "dockerd", "--data-root", str(self.folder / "root"),
                 "--exec-root", str(self.folder / "exec"), "-H", self.host, "--pidfile", str(self.pidfile),
                 "--bridge", "none", "--default-address-pool", f"base=10.{self.octet}.0.0/16,size=24",
                 *self.options],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, check=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
            if self.last_words(began) or time.monotonic() > deadline:
                self._kill()
                raise EngineDidNotStart(f"dockerd did not answer on {self.host}: "
                                        f"{self.last_words(began) or 'no answer'}; see {self.log}",
                                        self._log_since(began))
            time.sleep(0.2)

    def _answers(self) -> bool:
        try:
            with contextlib.closing(self.client()) as client:
                return bool(client.ping())
        except Exception:  # noqa: BLE001 - not up (yet)
            return False

    def _log_since(self, offset: int) -> str:
        with contextlib.suppress(OSError), open(self.log, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
        return ""

    def last_words(self, since: int = 0) -> str:
        """The panic or fatal line dockerd wrote to its log after offset `since`, if any."""
        lines = self._log_since(since).splitlines()
        return next((line for line in reversed(lines) if line.startswith("panic:") or "level=fatal" in line), "")

    def log_size(self) -> int:
        """Where dockerd's log ends now: `restarts_since` reads on from here."""
        return self.log.stat().st_size if self.log.exists() else 0

    def restarts_since(self, offset: int) -> list[float]:
        """The restarts (a SIGTERM, then up again) the log shows after `offset`, each as the seconds
        from the start the engine refused just before it (or from the SIGTERM) until it answered."""
        with open(self.log, "rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
        windows, since, refused = [], None, None
        for line in lines:
            when = _log_time(line)
            if "port is already allocated" in line and since is None:
                refused = when
            elif "Processing signal 'terminated'" in line:
                since = refused or when
            elif "API listen on" in line and since is not None and when is not None:
                windows.append((when - since).total_seconds())
                since = refused = None
        return windows

    def cut(self) -> None:
        """SIGKILL the engine and all it runs at once: dockerd, containerd, the port proxies, the
        shims and every container, frozen in one instant first so that none runs a step more."""
        Freeze(f"engine-{self.octet}", self.processes).kill()
        self.forget_run_state()

    def forget_run_state(self) -> None:
        """What the power leaves of an engine whose processes are gone: its data, not /run.

        The exec root is /run/docker on a device, a tmpfs the power empties. Left in place, its
        containerd pidfile names a dead process (a zombie, where nothing reaps orphans), and the
        next dockerd waits a minute for that containerd, then exits."""
        run = self.folder / "exec"
        points = {fields[1] for fields in map(str.split, Path("/proc/mounts").read_text().splitlines())
                  if fields[1].startswith(f"{run}/")}
        for point in sorted(points, reverse=True):  # the deepest first
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        shutil.rmtree(run, ignore_errors=True)

    def processes(self) -> set[int]:
        """dockerd, the shims (named by our folder: they are reparented) and all they started."""
        table = list(_processes())
        roots = {pid for pid, _, cmdline in table if str(self.folder) in cmdline}
        return roots | _descendants(table, roots)

    def stop(self) -> None:
        """SIGTERM, as a service manager stops it (SIGKILL after STOP_TIMEOUT_S), then its bridges go."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            if not wait_gone({pid}, STOP_TIMEOUT_S):
                self._kill()
        if self.started:
            delete_bridges(self.octet)

    def restart(self) -> None:
        self.stop()
        self.boot()

    def _kill(self) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_gone({pid}, 10)


class Freeze:
    """The processes `find()` names, stopped in one instant and kept stopped until `kill()`.

    With a cgroup v1 freezer, every process is moved into a cgroup of ours (round after round
    until `find()` names no new one; a child forked meanwhile inherits the cgroup), then the
    cgroup is frozen with one write (`late`: the container processes runc moved out meanwhile,
    frozen right after). Without one, SIGSTOP round after round. Either way nothing of the set
    may run a step once `Freeze` returned: `ran()` names those whose scheduler run time moved
    since, `escaped()` the processes `find()` names now that were not frozen.
    """

    def __init__(self, name: str, find: Callable[[], set[int]]) -> None:
        self.find = find
        self.cgroup = FREEZER / f"fioup-flow-{name}-{os.getpid()}" if _writable(FREEZER) else None
        self.pids: set[int] = set()
        self.late: set[int] = set()  # frozen a moment after the others (see `_sweep`)
        self.stuck: dict[int, str] = {}  # when the freezer did not settle: each member, where it waited
        try:
            if self.cgroup is not None:
                self.cgroup.mkdir(exist_ok=True)
                self._gather(self._move)
                (self.cgroup / "freezer.state").write_text("FROZEN")
                self._wait_frozen()
                # and the children forked, into the cgroup, between the last round and the freeze
                self.pids |= self._members()
                self.late = self._sweep()
            else:
                self._gather(lambda pid: os.kill(pid, signal.SIGSTOP))
                self._wait_stopped()
        except BaseException:
            self.kill()  # never leave a half-frozen set behind
            raise
        self.run_times = _run_times(self.pids)

    def _gather(self, stop: Callable[[int], None]) -> None:
        while fresh := self.find() - self.pids:
            for pid in fresh:
                with contextlib.suppress(ProcessLookupError, OSError):
                    stop(pid)
            self.pids |= fresh

    def _move(self, pid: int) -> None:
        (self.cgroup / "cgroup.procs").write_text(str(pid))

    def _members(self) -> set[int]:
        return {int(pid) for pid in (self.cgroup / "cgroup.procs").read_text().split()}

    def _sweep(self) -> set[int]:
        """runc moves a container's first process into the container's own cgroup as it starts it:
        one it moved out of ours between the last round and the freeze still runs. Each such one
        joins the frozen cgroup now (and freezes there), a moment late; returns them."""
        late: set[int] = set()
        while stray := {pid for pid in self.find() - self._members() if alive(pid)}:
            for pid in stray:
                with contextlib.suppress(ProcessLookupError, OSError):
                    self._move(pid)
            late |= stray
            self.pids |= stray
            self._wait_frozen()
        return late

    def _wait_frozen(self) -> None:
        """Until the cgroup is FROZEN. A task the freezer cannot hold (asleep in the kernel where
        it may not be frozen) keeps it FREEZING: then every member gets a SIGSTOP as well, which
        stops such a task on its way back to user space; `stuck` says where each one waited,
        and `ran()` still tells whether anything ran."""
        deadline = time.monotonic() + FREEZE_TIMEOUT_S
        while (self.cgroup / "freezer.state").read_text().strip() != "FROZEN":
            if time.monotonic() > deadline:
                self.stuck = {pid: _waiting_in(pid) for pid in self._members()}
                for pid in self.stuck:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGSTOP)
                self.pids |= set(self.stuck)
                self._wait_stopped()
                return
            time.sleep(0.001)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def _wait_stopped(self) -> None:
        """A SIGSTOP takes effect a moment after kill() returns: until every process shows it (or
        sleeps uninterruptibly, as a parent waiting for the child it vforked: it stops on waking)."""
        deadline = time.monotonic() + SIGSTOP_TIMEOUT_S
        while running := {pid: _state(pid) for pid in self.pids if _state(pid) not in ("T", "t", "D", "Z", None)}:
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes did not stop in {SIGSTOP_TIMEOUT_S} s: {running}")
            time.sleep(0.001)

    @property
    def how(self) -> str:
        if self.cgroup is None:
            return "SIGSTOP"
        return "cgroup freezer" + (" and SIGSTOP (the freezer did not settle)" if self.stuck else "")

    def ran(self) -> set[int]:
        """The frozen processes that ran since the freeze (a check that must stay empty). One that
        was exiting as the freeze came only finished dying (no freezer holds an exiting task): a
        zombie now, it is not counted."""
        now = _run_times(self.pids)
        return {pid for pid, (started, spent) in now.items()
                if pid in self.run_times and self.run_times[pid][0] == started and self.run_times[pid][1] != spent
                and _state(pid) != "Z"}

    def escaped(self) -> set[int]:
        """Processes of the set alive now that the freeze did not stop (must stay empty)."""
        return {pid for pid in self.find() - self.pids if alive(pid)}

    def kill(self) -> None:
        """SIGKILL every frozen process and let them die (a frozen one dies once thawed)."""
        if self.cgroup is not None and self.cgroup.exists():
            self.pids |= {int(pid) for pid in (self.cgroup / "cgroup.procs").read_text().split()}
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.cgroup is not None:
            (self.cgroup / "freezer.state").write_text("THAWED")
        wait_gone(self.pids, 10)
        for _ in range(50):  # the cgroup empties a moment after its last process died
            if self.cgroup is None or not self.cgroup.exists():
                return
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()
            time.sleep(0.02)


def wait_gone(pids: set[int], timeout_s: float) -> bool:
    """Wait until none of `pids` runs; False if some still do after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _state(pid: int) -> str | None:
    """A process's state letter (R, S, D, T, Z...), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _waiting_in(pid: int) -> str:
    """Where in the kernel a process sleeps (its wchan), with its name and state: for a report."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        return f"{name} {_state(pid)} {Path(f'/proc/{pid}/wchan').read_text().strip() or '-'}"
    except OSError:
        return "gone"


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK)


def _run_times(pids: set[int]) -> dict[int, tuple[int, int]]:
    """Per process, (its start time, nanoseconds its threads spent on a CPU so far): the start time
    tells a process from a later one that was given its pid (/proc/PID/stat, task/*/schedstat)."""
    spent = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            started = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
            spent[pid] = (started, sum(int((task / "schedstat").read_text().split()[0])
                                       for task in Path(f"/proc/{pid}/task").iterdir()))
    return spent


def _log_time(line: str) -> datetime | None:
    """The time dockerd stamped `line` with (to the microsecond)."""
    found = re.match(r'time="([0-9T:-]+)(\.\d{1,6})?\d*Z"', line)
    return datetime.fromisoformat(found[1] + (found[2] or "")) if found else None


def _processes() -> Iterator[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every live process on the machine."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if stat[0] != "Z":
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    yield int(entry.name), int(stat[1]), cmdline


def process_tree(pid: int) -> set[int]:
    """`pid` and every process it started, and theirs (what a kill of a command takes with it)."""
    return {pid} | _descendants(list(_processes()), {pid})


def _descendants(table: list[tuple[int, int, str]], roots: set[int]) -> set[int]:
    found, frontier = set(), set(roots)
    while frontier:
        frontier = {pid for pid, parent, _ in table if parent in frontier} - found
        found |= frontier
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description="Start, stop or restart a private Docker engine.")
    parser.add_argument("action", choices=["start", "stop", "restart"])
    parser.add_argument("folder", type=Path, help="the engine's folder (socket, data, log)")
    args = parser.parse_args()
    engine = PrivateEngine(args.folder)
    try:
        getattr(engine, {"start": "boot"}.get(args.action, args.action))()
    except EngineDidNotStart as exc:
        print(exc, file=sys.stderr)
        print("\n".join(engine.log.read_text(errors="replace").splitlines()[-30:]), file=sys.stderr)
        return 1
    if args.action != "stop":
        print(engine.host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
