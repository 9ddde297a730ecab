"""The gateway or the registry goes away during an update: retried with backoff, then a clear error
with fioup's exit code, and the update goes through once they are back.

The session's factory is shared by every test: whatever a test takes down, it brings back up in
a `finally` (on the same ports, which is what devices registered against it rely on).
`FIOUP_FLOW_RETRY_SECONDS=3` (tests/support.py) keeps each call's retries to about 3 seconds.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import BIN, Device, fresh_device, publish, sample_page

from fioup_flow.factory.cli import REGISTRY, SERVER, bring_up
from fioup_flow.factory.devices import DeviceRecords
from fioup_flow.factory.process import process_running, stop_process

pytestmark = [pytest.mark.factory, pytest.mark.docker]

HWID = "dead-links-linux"
TAG = "dead-links"
V1 = {"shellhttpd": "shellhttpd/v1", "pair": "pair/v1"}
MIN_RETRYING_S = 1.0  # a refused connection fails in milliseconds: taking longer means it was retried
MAX_FAILING_S = 60.0  # ...and the retries end: a dead link is an error, not a hang
GIVE_UP_ONCE_S = 30.0  # a few retry budgets; each of the 7 blobs waiting out its own took ~47 s


@pytest.fixture(scope="module")
def dead_links_release(factory) -> None:
    publish(factory.home.root, 1, V1, TAG, "--hwid", HWID)


@pytest.fixture
def device(factory, dead_links_release, engine, tmp_path: Path) -> Iterator[Device]:
    """A freshly registered device of this release, on an engine with nothing on it."""
    with fresh_device(factory, engine, tmp_path / "sota", TAG, HWID) as fresh:
        yield fresh


@contextmanager
def stopped(factory, service: str) -> Iterator[None]:
    """One of the factory's processes stopped (connections refused) until the block ends."""
    assert stop_process(factory.home, service)
    try:
        yield
    finally:
        bring_up(factory.home)
    assert process_running(factory.home, service)


def factory_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "fioup-flow-factory"), *args], capture_output=True, text=True, check=False,
                          timeout=120)


@contextmanager
def factory_down(factory) -> Iterator[None]:
    """`fioup-flow-factory down` until the block ends, then `up`, which must answer on the same ports."""
    home = str(factory.home.root)
    assert factory_cli("down", "--home", home).returncode == 0
    try:
        yield
    finally:
        up = factory_cli("up", "--home", home)
        assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout) == factory.info, "up after down answers on the same ports"


def timed(device: Device, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run `fioup-flow ARGS` on the device; (the result, seconds it took)."""
    start = time.monotonic()
    done = device.run(*args)
    took = time.monotonic() - start
    print(f"\n{' '.join(args)}: exit {done.returncode} after {took:.1f}s: {done.stderr.strip().splitlines()[-1]}")
    return done, took


def events(factory, device: Device) -> list[dict]:
    records = DeviceRecords(factory.home)
    return records.events(records.find(device.name)["uuid"])


def failures(factory, device: Device) -> list[tuple[str, str]]:
    """(event type, details) of every event the gateway recorded with success=false."""
    return [(e["eventType"]["id"], e["event"]["details"]) for e in events(factory, device)
            if e["event"]["success"] is False]


def assert_applies(device: Device, command: str = "apply", *args: str) -> None:
    done = device.run(command, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "v1" in sample_page()
    status = device.json("status", "--json")
    assert status["current"]["version"] == 1 and status["in_progress"] is None


def test_a_registry_down_during_the_fetch_fails_with_exit_40_and_resume_completes_once_it_is_back(
        device, factory) -> None:
    # The dry run walks the apps, so the plan below needs no registry: it goes down mid-update.
    assert device.run("apply", "1", "--dry-run").returncode == 0
    with stopped(factory, REGISTRY):
        failed, took = timed(device, "apply", "1")
        assert failed.returncode == 40, failed.stdout + failed.stderr
        assert "cannot connect" in failed.stderr
        assert MIN_RETRYING_S < took < MAX_FAILING_S
        status = device.json("status", "--json")
        assert status["in_progress"]["version"] == 1, "the update stays in progress for resume"
        assert {f["exit_code"] for f in status["in_progress"]["failed"]} == {40}
        assert status["current"] is None
    ((kind, details),) = failures(factory, device)
    assert kind == "EcuDownloadCompleted" and "cannot connect" in details
    assert_applies(device, "resume")


def test_a_gateway_down_during_resume_fails_with_exit_40_and_its_report_waits_for_the_gateway(
        device, factory) -> None:
    assert device.run("apply", "1", "--dry-run").returncode == 0
    with stopped(factory, REGISTRY):
        assert device.run("apply", "1").returncode == 40  # frozen, nothing fetched yet
    with stopped(factory, SERVER):
        failed, took = timed(device, "resume")
        assert failed.returncode == 40, failed.stdout + failed.stderr
        assert "cannot get registry credentials from the gateway" in failed.stderr
        assert MIN_RETRYING_S < took < GIVE_UP_ONCE_S, "the gateway is given up on once, not once per blob"
        assert "going on with the frozen plan" in failed.stderr, "offline, the Targets are not checked again"
        assert "report(s) wait in the outbox" in failed.stderr  # the failed check, the second attempt's events and failure
    assert len(failures(factory, device)) == 1, "the later failures wait in the device's outbox"
    assert_applies(device, "resume")
    assert [kind for kind, _ in failures(factory, device)] == [
        "EcuDownloadCompleted", "MetadataUpdateCompleted", "EcuDownloadCompleted"]
    assert "cannot get registry credentials" in failures(factory, device)[2][1]


def test_a_registry_down_while_the_apps_are_walked_fails_with_exit_40_and_nothing_frozen(device, factory) -> None:
    with stopped(factory, REGISTRY):
        failed, took = timed(device, "apply", "1")
        assert failed.returncode == 40, failed.stdout + failed.stderr
        assert "cannot connect" in failed.stderr
        assert MIN_RETRYING_S < took < MAX_FAILING_S
        assert device.json("status", "--json")["in_progress"] is None
        assert device.run("resume").stdout.strip() == "No update in progress"
    ((kind, details),) = failures(factory, device)
    assert kind == "UpdateInitCompleted" and "cannot connect" in details
    assert_applies(device)


def test_a_gateway_down_during_the_check_fails_with_exit_20_and_the_failure_is_reported_once_it_is_back(
        device, factory) -> None:
    with factory_down(factory):
        failed, took = timed(device, "apply", "1")
        assert failed.returncode == 20, failed.stdout + failed.stderr
        assert "TUF metadata update failed" in failed.stderr
        assert MIN_RETRYING_S < took < MAX_FAILING_S
        assert device.run("resume").stdout.strip() == "No update in progress"
    assert failures(factory, device) == [], "nothing reached a gateway that was down"
    assert_applies(device)
    ((kind, details),) = failures(factory, device)
    assert kind == "MetadataUpdateCompleted" and "TUF metadata update failed" in details
