"""A device refuses a broken Target and keeps running what it ran; a good Target goes through after.

Each scenario starts from a device running v1 (shellhttpd v1 + pair v1, both up). The broken
Targets carry shellhttpd v2 broken one way (`fioup_flow.factory.broken`) beside pair v1:
a layer whose bytes do not match its digest, a bundle with a `../escape` entry, a bundle whose
links lead a later file out of the project, a compose file that is not YAML. The release lives under its own hardware id, so its versions are its own.

A Target refused once is refused again: its failure is its own, so the update ends (nothing is
left in progress to retry) and the Target is marked bad until `apply VERSION --force`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from support import BIN, Device, clean_engine, new_device, publish, sample_page

from fioup_flow.factory.broken import ESCAPE_NAME
from fioup_flow.factory.devices import DeviceRecords

pytestmark = [pytest.mark.factory, pytest.mark.docker]

HWID = "bad-input-linux"
TAG = "bad-input"
OLD, GOOD = 1, 6
OLD_APPS = {"shellhttpd": "shellhttpd/v1", "pair": "pair/v1"}
GOOD_APPS = {"shellhttpd": "shellhttpd/v2", "pair": "pair/v1"}
BROKEN = {"digest": 2, "path-escape": 3, "bad-compose": 4, "symlink-chain": 5}  # kind -> version


@pytest.fixture(scope="module")
def bad_release(factory) -> None:
    """v1 and v6 good, v2..v5 broken (through the `publish-broken` command), all under HWID/TAG."""
    publish(factory.home.root, OLD, OLD_APPS, TAG, "--hwid", HWID)
    publish(factory.home.root, GOOD, GOOD_APPS, TAG, "--hwid", HWID)
    for kind, version in BROKEN.items():
        done = subprocess.run([str(BIN / "fioup-flow-factory"), "publish-broken", "--home", str(factory.home.root),
                               "--version", str(version), "--kind", kind, "--break", "shellhttpd",
                               "--app", "shellhttpd=sample:shellhttpd/v2", "--app", "pair=sample:pair/v1",
                               "--tag", TAG, "--hwid", HWID], check=False, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr


@pytest.fixture
def device(factory, bad_release, engine, tmp_path: Path) -> Iterator[Device]:
    """A device of the bad-input release already running v1, on an engine with nothing else."""
    clean_engine(engine)
    device = new_device(factory.info, tmp_path / "sota", "--tag", TAG, "--hwid", HWID)
    done = device.run("apply", str(OLD))
    assert done.returncode == 0, done.stdout + done.stderr
    yield device
    clean_engine(engine)


def running(engine: docker.DockerClient) -> dict[str, str]:
    """container name -> id of every running container."""
    return {c.name: c.id for c in engine.containers.list()}


def installed(apps: Path) -> dict[str, str]:
    """Every file of the installed projects (path -> content): what must not change, byte for byte."""
    return {p.relative_to(apps).as_posix(): p.read_text() for p in sorted(apps.rglob("*"))
            if p.is_file() and not p.relative_to(apps).as_posix().startswith(".")}


def failure_events(factory, device: Device) -> list[dict]:
    records = DeviceRecords(factory.home)
    return [e for e in records.events(records.find(device.name)["uuid"]) if e["event"]["success"] is False]


def assert_refused(device: Device, engine, kind: str, exit_code: int, message: str) -> subprocess.CompletedProcess:
    """Apply the broken Target: it fails with `exit_code` and `message`, and what ran still runs."""
    apps = device.sota_dir / "compose-apps"
    before = running(engine), installed(apps)
    assert len(before[0]) == 3  # shellhttpd's web, pair's producer and consumer
    failed = device.run("apply", str(BROKEN[kind]))
    print(f"\n{kind}: exit {failed.returncode}: {failed.stderr.strip().splitlines()[-1]}")
    assert failed.returncode == exit_code, failed.stdout + failed.stderr
    assert message in failed.stderr
    assert (running(engine), installed(apps)) == before
    assert "v1" in sample_page()
    assert not any((apps / ".staging").glob("*")), "no half-unpacked project is left behind"
    status = device.json("status", "--json")
    assert status["current"]["version"] == OLD
    assert {a["name"]: a["state"] for a in status["apps"]} == {"pair": "running", "shellhttpd": "running"}
    return failed


def assert_ended_and_marked_bad(device: Device, kind: str, message: str) -> None:
    """The update is over, its Target bad with the reason; asking for it again is refused (exit 9)."""
    status = device.json("status", "--json")
    assert status["in_progress"] is None, "nothing left in progress: a retry would fail the same way"
    assert (status["history"][0]["outcome"], status["history"][0]["version"]) == ("failed", BROKEN[kind])
    (bad,) = status["bad_targets"]
    assert bad["version"] == BROKEN[kind] and message in bad["reason"]
    assert device.run("resume").stdout.strip() == "No update in progress"
    again = device.run("apply", str(BROKEN[kind]))
    assert again.returncode == 9 and "--force" in again.stderr, again.stderr


def assert_good_target_applies(device: Device) -> None:
    done = device.run("apply", str(GOOD))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "v2" in sample_page()
    assert device.json("status", "--json")["current"]["version"] == GOOD


def test_a_layer_that_does_not_match_its_digest_fails_the_fetch_with_exit_40(device, engine, factory) -> None:
    assert_refused(device, engine, "digest", 40, "does not match its digest")
    (event,) = failure_events(factory, device)
    assert event["eventType"]["id"] == "EcuDownloadCompleted"
    assert "does not match its digest" in event["event"]["details"]
    assert_ended_and_marked_bad(device, "digest", "does not match its digest")
    assert len(failure_events(factory, device)) == 1, "not tried again"
    assert_good_target_applies(device)


@pytest.mark.parametrize("kind, message", [
    ("path-escape", "points outside the project"),  # `../escape`
    ("symlink-chain", "passes through 'a', a symlink"),  # `a -> .`, `a/b -> ..`, `a/b/c -> ..`, `a/b/c/escape`
])
def test_a_bundle_entry_that_escapes_the_project_fails_the_install_with_exit_60(device, engine, factory, kind,
                                                                               message) -> None:
    assert_refused(device, engine, kind, 60, message)
    apps = device.sota_dir / "compose-apps"
    assert [p for p in device.sota_dir.rglob(ESCAPE_NAME)] == [], "nothing was written outside the project"
    assert not (apps / ".staging" / "shellhttpd").exists()
    (event,) = failure_events(factory, device)
    assert event["eventType"]["id"] == "EcuInstallationCompleted"
    assert message in event["event"]["details"]
    assert_ended_and_marked_bad(device, kind, message)
    assert_good_target_applies(device)


def test_a_compose_file_that_does_not_parse_is_refused_before_the_plan_with_exit_60(device, engine,
                                                                                   factory) -> None:
    assert_refused(device, engine, "bad-compose", 60, "docker-compose.yml does not parse")
    assert device.json("status", "--json")["in_progress"] is None, "nothing was frozen"
    (event,) = failure_events(factory, device)
    assert event["eventType"]["id"] == "UpdateInitCompleted"
    assert event["event"]["version"] == str(BROKEN["bad-compose"])
    assert "does not parse" in event["event"]["details"]

    assert device.run("cancel").stdout.strip() == "No update in progress to cancel"
    (bad,) = device.json("status", "--json")["bad_targets"]
    assert bad["version"] == BROKEN["bad-compose"] and "does not parse" in bad["reason"]
    assert device.run("apply", str(BROKEN["bad-compose"])).returncode == 9, "refused again, as bad"
    assert_good_target_applies(device)
