"""A version 2 that crash-loops is rolled back to version 1, on a real engine, from a real registry.

The release, under a hardware id of its own: v1 = shellhttpd v1 + pair v1; v2 = shellhttpd v2 +
crashloop v1 (shellhttpd updated, pair removed, crashloop added: it runs a second, exits 1 and is
restarted, unless the device's `[compose_env]` sets CRASHLOOP_CRASH = "no"). A rollback must
bring shellhttpd v1 back with the very images it ran, bring pair back, and take crashloop away;
the device stays on v1 with v2 marked bad; kill -9 anywhere on the way converges to the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Device, compose_env_drop_in, device_running, publish, running_images, sample_page
from test_crash import failed_for_good, in_progress, kill, start_apply, wait_for

from fioup_flow.errors import StartError
from fioup_flow.events import DETAILS_MAX
from fioup_flow.factory.devices import DeviceRecords

pytestmark = [pytest.mark.factory, pytest.mark.docker]

HWID = "rollback-linux"
TAG = "rollback"
V1 = {"shellhttpd": "shellhttpd/v1", "pair": "pair/v1"}
V2 = {"shellhttpd": "shellhttpd/v2", "crashloop": "crashloop/v1"}
WINDOW_S = 3
ROLLED_BACK, BAD_TARGET = 110, 9
UPDATE_EVENTS = ["UpdateInitStarted", "UpdateInitCompleted", "EcuDownloadStarted", "EcuDownloadCompleted",
                 "EcuInstallationStarted", "EcuInstallationApplied", "EcuInstallationCompleted"]


@pytest.fixture(scope="module")
def rollback_release(factory) -> None:
    publish(factory.home.root, 1, V1, TAG, "--hwid", HWID)
    publish(factory.home.root, 2, V2, TAG, "--hwid", HWID)


@pytest.fixture
def device(factory, rollback_release, engine, tmp_path: Path) -> Iterator[Device]:
    """A device of the rollback release running v1, its health window WINDOW_S seconds."""
    with device_running(factory, engine, tmp_path, TAG, HWID, 1, WINDOW_S) as device:
        yield device


def events(factory, device: Device) -> list[dict]:
    found = DeviceRecords(factory.home)
    return found.events(found.find(device.name)["uuid"])


def assert_back_on_v1(device: Device, engine, before: dict[str, str]) -> dict:
    """The world says v1 runs again, with the images it ran before; the device says it is on v1 and v2 is bad."""
    assert running_images(engine) == before, "v1 runs again with the very images it ran before the update"
    assert "v1" in sample_page()
    status = device.json("status", "--json")
    assert status["current"]["version"] == 1 and status["in_progress"] is None
    assert {a["name"]: a["state"] for a in status["apps"]} == {"pair": "running", "shellhttpd": "running"}
    (bad,) = status["bad_targets"]
    assert bad["version"] == 2 and "crasher" in bad["reason"]
    return status


def test_a_crash_looping_version_2_is_rolled_back_and_version_1_serves_again_with_the_same_images(
        device: Device, engine, factory) -> None:
    before = running_images(engine)
    done = device.run("apply", "2")
    assert done.returncode == ROLLED_BACK, done.stdout + done.stderr
    assert "rolled back" in done.stderr and "--force" in done.stderr
    status = assert_back_on_v1(device, engine, before)
    rolled, failed = status["history"][:2]
    assert (rolled["kind"], rolled["outcome"], rolled["version"]) == ("rollback", "completed", 1)
    assert (failed["outcome"], failed["version"], rolled["rollback_of"]) == ("rolled-back", 2, failed["plan_id"])
    assert not (device.sota_dir / "compose-apps" / "crashloop").exists(), "the rollback's prune took v2's app away"

    sent = events(factory, device)
    update = [e for e in sent if e["event"]["correlationId"] == failed["correlation_id"]]
    assert [e["eventType"]["id"] for e in update] == UPDATE_EVENTS
    completed = update[-1]
    assert completed["event"]["success"] is False and len(completed["event"]["details"]) <= DETAILS_MAX
    details = json.loads(completed["event"]["details"])
    assert "crasher" in details["error"] and "health window" in details["error"]
    assert set(details["services"]) == {"crashloop", "shellhttpd"}, "each service the update started, with its state"
    back = [e for e in sent if e["event"]["correlationId"] == rolled["correlation_id"]]
    assert [e["eventType"]["id"] for e in back] == UPDATE_EVENTS, "the rollback is an update of its own"
    assert all(e["event"]["success"] is not False and e["event"]["version"] == "1" for e in back)
    assert json.loads(back[0]["event"]["details"])["rollback_of"] == failed["plan_id"]
    found = DeviceRecords(factory.home)
    last_states = found.apps_states(found.find(device.name)["uuid"])[-1]
    assert set(last_states["apps"]) == {"pair", "shellhttpd"}, "apps-states report the device on v1 again"


def test_the_bad_target_is_skipped_refused_by_version_and_retried_by_hand_with_force(
        device: Device, engine, tmp_path: Path) -> None:
    assert device.run("apply", "2").returncode == ROLLED_BACK
    latest = device.run("apply")
    assert latest.returncode == 0 and latest.stdout.startswith("Already running"), \
        "the newest Target that is not bad is v1, which runs"
    refused = device.run("apply", "2")
    assert refused.returncode == BAD_TARGET
    assert "marked bad" in refused.stderr and "apply 2 --force" in refused.stderr
    assert device.json("status", "--json")["current"]["version"] == 1

    device.drop_ins[0] = compose_env_drop_in(tmp_path, CRASHLOOP_CRASH="no")  # what was wrong is mended here
    forced = device.run("apply", "2", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    status = device.json("status", "--json")
    assert status["current"]["version"] == 2 and status["bad_targets"] == [], "a forced update that completes clears the mark"
    assert "v2" in sample_page()


def test_a_forced_retry_that_fails_again_is_rolled_back_again(device: Device, engine) -> None:
    before = running_images(engine)
    assert device.run("apply", "2").returncode == ROLLED_BACK
    again = device.run("apply", "2", "--force")
    assert again.returncode == ROLLED_BACK, again.stdout + again.stderr
    assert_back_on_v1(device, engine, before)


# --- kill -9 on the way: the device converges to v1, v2 bad -------------------------------------


def node_reached(device: Device, kind: str, prefix: str, state: str) -> bool:
    """Whether the plan in progress is of `kind` (update, rollback) and its node `prefix...` is in `state`."""
    found = in_progress(device)
    return found is not None and found[0].meta.get("kind", "update") == kind and any(
        node.startswith(prefix) and s == state for node, s in found[1].items())


def resume_converges_to_v1(device: Device, engine, before: dict[str, str]) -> None:
    done = device.run("resume")
    assert done.returncode == ROLLED_BACK, done.stdout + done.stderr
    assert_back_on_v1(device, engine, before)


def kill_inside_the_window(device: Device) -> None:
    """Apply version 2 and kill it while the crash-looping app is in its health window."""
    process = start_apply(device, "2")
    wait_for(lambda: node_reached(device, "update", "healthy:crashloop", "running"), 120, "the window")
    kill(process)


def test_a_kill_inside_the_health_window_resumes_into_the_rollback(device: Device, engine) -> None:
    before = running_images(engine)
    kill_inside_the_window(device)
    resume_converges_to_v1(device, engine, before)


def test_a_kill_between_the_failure_and_the_rollback_resumes_into_the_rollback(device: Device, engine) -> None:
    """The state a kill leaves right after the window failed, before the hand-over (`failed_for_good`)."""
    before = running_images(engine)
    kill_inside_the_window(device)
    failed_for_good(device, "healthy:crashloop", StartError("app crashloop: crasher restarted"))
    resume_converges_to_v1(device, engine, before)
    failed_update = device.json("status", "--json")["history"][1]
    assert (failed_update["outcome"], failed_update["attempts"]) == ("rolled-back", 1), \
        "the failure found at boot is handed over, the failed update not tried again"


@pytest.mark.parametrize("node", ["report:UpdateInitStarted", "stop:crashloop", "install:pair", "start:shellhttpd",
                                  "healthy:pair"])
def test_a_kill_inside_the_rollback_resumes_it_to_version_1(device: Device, engine, node: str) -> None:
    before = running_images(engine)
    process = start_apply(device, "2")
    wait_for(lambda: node_reached(device, "rollback", node, "done"), 180, f"the rollback's {node}")
    kill(process)
    resume_converges_to_v1(device, engine, before)
