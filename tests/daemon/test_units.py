"""The systemd units shipped in the package (`fioup_flow/units/`), checked by `systemd-analyze verify`
against a copy of this machine's unit folder (so docker.service and the targets named exist), and
read for the promises the README makes of them."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path

import pytest

UNITS = Path(str(files("fioup_flow") / "units"))
SYSTEM_UNITS = Path("/lib/systemd/system")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A filesystem root for `systemd-analyze verify --root`: the system's units, the binaries the
    units name (stubs), fioup-flow's units installed as the README says."""
    if shutil.which("systemd-analyze") is None or not (SYSTEM_UNITS / "docker.service").exists():
        pytest.skip("needs systemd-analyze and docker.service (Debian's systemd and docker.io)")
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "lib" / "systemd" / "system", symlinks=True)
    for binary in ("usr/bin/fioup-flow", "usr/sbin/dockerd", "bin/kill"):
        stub = root / binary
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    etc = root / "etc" / "systemd" / "system"
    (etc / "docker.service.d").mkdir(parents=True)
    shutil.copy(UNITS / "fioup-flow.service", etc)
    shutil.copy(UNITS / "docker.service.d" / "fioup-flow-recover.conf", etc / "docker.service.d")
    libexec = root / "usr" / "libexec" / "fioup-flow"
    libexec.mkdir(parents=True)
    shutil.copy(UNITS / "fioup-flow-docker-recover", libexec)
    return root


def verify(root: Path, unit: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", unit],
                          capture_output=True, text=True, timeout=60)


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(path)
    return parser


@pytest.mark.parametrize("name", ["fioup-flow.service", "docker.service"])
def test_systemd_analyze_verify_finds_nothing_to_say(root: Path, name: str) -> None:
    done = verify(root, name)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_a_unit_with_a_mistake_is_caught(root: Path) -> None:
    """The check can fail: an unknown key, and a command that is not there."""
    path = root / "etc" / "systemd" / "system" / "fioup-flow.service"
    path.write_text(path.read_text().replace("Restart=", "Restrat="))
    assert "Unknown key 'Restrat'" in verify(root, "fioup-flow.service").stderr
    (root / "usr" / "libexec" / "fioup-flow" / "fioup-flow-docker-recover").unlink()
    done = verify(root, "docker.service")
    assert done.returncode != 0 and "is not executable" in done.stderr


def test_the_daemon_starts_after_the_engine_and_the_network_and_restarts_after_a_failure() -> None:
    service = unit(UNITS / "fioup-flow.service")
    assert {"docker.service", "network-online.target"} <= set(service["Unit"]["After"].split())
    assert "network-online.target" in service["Unit"]["Wants"].split()
    assert "Requires" not in service["Unit"] and "BindsTo" not in service["Unit"], \
        "restarting the engine must not stop the updater mid-update"
    assert service["Service"]["ExecStart"] == "/usr/bin/fioup-flow daemon"
    assert service["Service"]["Restart"] == "on-failure" and int(service["Service"]["RestartSec"]) > 0
    assert int(service["Service"]["TimeoutStopSec"]) >= 90, "long enough for one node"
    assert service["Service"]["KillMode"] == "mixed", "SIGTERM to the daemon, not to the compose it runs"


def test_the_docker_drop_in_runs_the_recovery_after_the_engine_stopped_or_failed() -> None:
    drop_in = unit(UNITS / "docker.service.d" / "fioup-flow-recover.conf")
    assert drop_in["Service"]["ExecStopPost"] == "/usr/libexec/fioup-flow/fioup-flow-docker-recover"
    assert (UNITS / "fioup-flow-docker-recover").stat().st_mode & 0o111
