"""The opt-in docker.service drop-in's recovery, on Debian 12's Docker 20.10 (`fioup_flow/units/`).

A power cut can leave libnetwork's database holding a network whose config names an address pool
with none allocated; dockerd then panics at every start, in reservePools ("index out of range"),
and no app runs until a person moves the database aside. The harness met it about once in 84
engine cuts; here it is made deterministically, from a real database: the network's `ipamV4Info`
is emptied in place (bolt keeps no checksums on its pages), which is the state that panic reads.
The script moves the database aside after that panic and after nothing else; the engine then
starts, and an app's network can be made again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
import sys  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts" / "lib"))
from private_engine import EngineDidNotStart, PrivateEngine  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

SCRIPT = ROOT / "fioup_flow" / "units" / "fioup-flow-docker-recover"
FIELD = b'"ipamV4Info":"'


@pytest.fixture
def power() -> Iterator[PrivateEngine]:
    """An engine of the test's own (a short folder, as containerd's sockets need) holding an app's
    network, stopped cleanly."""
    if shutil.which("dockerd") is None:
        pytest.skip("needs dockerd (Debian 12's docker.io)")
    folder = Path(tempfile.mkdtemp(prefix="fioup-flow-engine-"))
    engine = PrivateEngine(folder)
    try:
        engine.boot()
        engine.client().networks.create("app_default", driver="bridge")
        engine.stop()
        yield engine
    finally:
        engine.stop()
        shutil.rmtree(folder, ignore_errors=True)


def network_db(power: PrivateEngine) -> Path:
    return power.folder / "root" / "network" / "files" / "local-kv.db"


def break_network_db(power: PrivateEngine) -> None:
    """Empty every stored network's `ipamV4Info` in place, keeping each value's length."""
    data = bytearray(network_db(power).read_bytes())
    start, changed = 0, 0
    while (at := data.find(FIELD, start)) >= 0:
        begin = end = at + len(FIELD)
        while data[end] != ord('"') or data[end - 1] == ord("\\"):
            end += 1
        data[begin:end] = b"[]" + b" " * (end - begin - 2)
        start, changed = end, changed + 1
    assert changed, "no network in the database"
    network_db(power).write_bytes(bytes(data))


def failed_start(power: PrivateEngine) -> EngineDidNotStart:
    """One start, without the recovery `boot` does."""
    with pytest.raises(EngineDidNotStart) as failed:
        power._start()  # noqa: SLF001 - one bare start, as systemd's first
    return failed.value


def recover(power: PrivateEngine, log: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(SCRIPT), "--data-root", str(power.folder / "root"), *args], input=log,
                          text=True, capture_output=True, timeout=60, env=env)


def aside(power: PrivateEngine) -> list[Path]:
    return sorted(network_db(power).parent.glob("local-kv.db.panic-*"))


def test_after_dockerds_panic_on_its_network_database_the_script_moves_it_aside_and_the_engine_starts(
        power: PrivateEngine) -> None:
    break_network_db(power)
    failed = failed_start(power)
    assert "panic: runtime error: index out of range" in failed.log
    assert "libnetwork.(*controller).reservePools" in failed.log
    assert failed_start(power).log, "it panics at every start, as on the device"

    done = recover(power, failed.log, "--log", "-")
    assert done.returncode == 0, done.stderr
    assert "dockerd panicked on its network database; moved" in done.stderr
    assert not network_db(power).exists() and len(aside(power)) == 1

    power._start()  # noqa: SLF001 - as systemd's Restart=on-failure does
    client = power.client()
    assert client.ping()
    assert "app_default" not in {n.name for n in client.networks.list()}, "the network went with the file"
    client.networks.create("app_default", driver="bridge")  # as compose makes it again


@pytest.mark.parametrize("log", [
    "",
    'time="2026-11-27T05:00:00Z" level=fatal msg="failed to start daemon: pid file found, ensure docker is not running"\n',
    "panic: runtime error: invalid memory address or nil pointer dereference\n\ngoroutine 1 [running]:\n"
    "github.com/docker/docker/daemon.(*Daemon).restore(0xc0009343c0)\n",
    "github.com/docker/libnetwork.(*controller).reservePools(0x1)\n",  # a frame alone, no panic
])
def test_any_other_failed_start_leaves_the_database_alone(power: PrivateEngine, log: str) -> None:
    done = recover(power, log, "--log", "-")
    assert done.returncode == 0 and done.stderr == ""
    assert network_db(power).exists() and not aside(power)


def fake_journal(tmp_path: Path, log: str) -> dict:
    """A `journalctl` that prints `log` for invocation "inv-1" only (the journal cannot run here:
    PID 1 is not systemd), first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "journal.log").write_text(log)
    journalctl = bin_dir / "journalctl"
    journalctl.write_text(f'#!/bin/sh\ncase "$*" in *_SYSTEMD_INVOCATION_ID=inv-1*) cat {tmp_path / "journal.log"};; esac\n')
    journalctl.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", INVOCATION_ID="inv-1")


def test_run_by_systemd_after_a_failed_start_it_reads_that_starts_journal_fake_journal(
        power: PrivateEngine, tmp_path: Path) -> None:
    break_network_db(power)
    env = fake_journal(tmp_path, failed_start(power).log)
    assert recover(power, "", env=dict(env, SERVICE_RESULT="success")).stderr == ""
    assert network_db(power).exists(), "a stop that went well is none of its business"
    done = recover(power, "", env=dict(env, SERVICE_RESULT="exit-code", EXIT_CODE="exited", EXIT_STATUS="2"))
    assert "moved" in done.stderr and not network_db(power).exists()


def test_the_harness_engine_boots_through_that_panic_as_a_device_with_the_drop_in(power: PrivateEngine) -> None:
    break_network_db(power)
    power.boot()
    assert power.client().ping() and len(aside(power)) == 1
