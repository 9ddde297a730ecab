"""A power cut stops the updater, compose, dockerd, containerd, the shims and the containers in
the same instant: `Freeze` stops a set of processes at once and can tell whether any of them ran
a step afterwards, or escaped it. Here the set is a few processes that fork a child every few
milliseconds, as compose and dockerd keep starting processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "lib"))
import private_engine  # noqa: E402
from private_engine import Freeze, alive  # noqa: E402

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="freezing other processes needs root"),
              pytest.mark.timeout(60)]
BUSY = """
import os, time
while True:
    child = os.fork()
    if child == 0:
        time.sleep(0.005)
        os._exit(0)
    os.waitpid(child, 0)
"""


@pytest.fixture(params=["cgroup freezer", "SIGSTOP"])
def how(request, monkeypatch) -> str:
    if request.param == "SIGSTOP":
        monkeypatch.setattr(private_engine, "FREEZER", Path("/nonexistent"))
    elif not os.access(private_engine.FREEZER, os.W_OK):
        pytest.skip("this machine has no writable cgroup v1 freezer")
    return request.param


@pytest.fixture
def busy() -> Iterator[list[subprocess.Popen]]:
    shells = [subprocess.Popen([sys.executable, "-c", BUSY], start_new_session=True) for _ in range(3)]
    yield shells
    for shell in shells:
        shell.kill()
        shell.wait()


def family(shells: list[subprocess.Popen]) -> set[int]:
    """The shells and whatever child each has right now."""
    pids = {shell.pid for shell in shells}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) in pids:
                    pids.add(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return pids


def test_a_frozen_set_runs_no_step_until_killed_then_is_gone(how, busy) -> None:
    with Freeze("test", lambda: family(busy)) as frozen:
        assert frozen.how == how
        time.sleep(0.3)  # the shells fork every 5 ms when they run
        assert frozen.ran() == set() and frozen.escaped() == set()
    assert not any(alive(pid) for pid in family(busy))


def test_a_process_that_runs_after_the_freeze_is_caught(how, busy) -> None:
    with Freeze("test", lambda: family(busy)) as frozen:
        woken = busy[0].pid
        if frozen.cgroup is not None:  # out of the frozen cgroup, as a process the freeze missed would be
            (private_engine.FREEZER / "cgroup.procs").write_text(str(woken))
        os.kill(woken, signal.SIGCONT)
        time.sleep(0.3)
        assert woken in frozen.ran()


def test_a_process_the_freeze_did_not_stop_is_named(how, busy) -> None:
    device, engine = busy[0], busy[1:]
    with Freeze("test", lambda: family([device])) as frozen:  # the updater stopped, the engine not: the old cut
        frozen.find = lambda: family(busy)  # what the cut is about: both
        assert {shell.pid for shell in engine} <= frozen.escaped()


def test_a_process_runc_moves_out_of_the_freezer_as_it_freezes_is_frozen_right_after(busy, monkeypatch) -> None:
    if not os.access(private_engine.FREEZER, os.W_OK):
        pytest.skip("this machine has no writable cgroup v1 freezer")
    moved = busy[0].pid
    gather = Freeze._gather

    def then_runc_moves_one(self, stop) -> None:  # as runc puts a container's process in its own cgroup
        gather(self, stop)
        (private_engine.FREEZER / "cgroup.procs").write_text(str(moved))

    monkeypatch.setattr(Freeze, "_gather", then_runc_moves_one)
    with Freeze("test", lambda: family(busy)) as frozen:
        assert moved in frozen.late  # and whatever it forked meanwhile
        time.sleep(0.3)
        assert frozen.ran() == set() and frozen.escaped() == set()


def test_a_freezer_that_does_not_settle_falls_back_to_sigstop_and_says_where_each_waited(busy, monkeypatch) -> None:
    if not os.access(private_engine.FREEZER, os.W_OK):
        pytest.skip("this machine has no writable cgroup v1 freezer")
    monkeypatch.setattr(private_engine, "FREEZE_TIMEOUT_S", 0.0)  # as if a task could not be frozen
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "FREEZING" if self.name == "freezer.state"
                        else real(self, *a, **k))
    with Freeze("test", lambda: family(busy)) as frozen:
        assert "did not settle" in frozen.how and frozen.stuck
        time.sleep(0.3)
        assert frozen.ran() == set() and frozen.escaped() == set()
