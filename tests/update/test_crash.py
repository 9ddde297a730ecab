"""An update killed with SIGKILL at the worst moments resumes to exactly where it should be.

(A kill -9 keeps what the kernel already holds; the power-cut harness, which drops unsynced
writes too, is a separate suite.) Bytes are counted at the registry, from its own log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
from support import BIN, Device, new_device, publish, registry_blob_gets, sample_page

from fioup_flow.checkpoint import CheckpointStore, store_path
from fioup_flow.errors import exit_code_of
from fioup_flow.factory.devices import DeviceRecords
from fioup_flow.factory.faults import Faults
from fioup_flow.graph import Plan
from fioup_flow.store import SYNC_EVERY
from fioup_flow.storeview import StoreView

pytestmark = [pytest.mark.factory, pytest.mark.docker]

BIG_TAG = "big"
BIG_HWID = "big-linux"  # a hardware id of its own, so its versions do not replace the shared releases
BIG_MB = 48


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def start_apply(device: Device, *args: str) -> subprocess.Popen:
    cfg_dirs = ",".join(str(p) for p in [device.cfg, *device.drop_ins])
    return subprocess.Popen([str(BIN / "fioup-flow"), "-c", cfg_dirs, "apply", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ, FIOUP_FLOW_RETRY_SECONDS="3"))


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def in_progress(device: Device) -> tuple[Plan, dict[str, str]] | None:
    """The plan in progress and each node's state, or None (read from a copy of the store: the look
    changes nothing the test judges)."""
    view = StoreView(store_path(device.sota_dir / "flow"))
    plan = view.current_plan()
    return None if plan is None else (plan, view.node_states(plan))


def failed_for_good(device: Device, node_prefix: str, error: Exception) -> None:
    """Leave the update in progress as a run that failed for good (a failure of its Target's own) at
    its node `node_prefix...` leaves it when killed before the hand-over: the node and the attempt
    recorded failed, permanently. Written here as the run writes them, since no poll can land in
    those few milliseconds reliably."""
    store = CheckpointStore(store_path(device.sota_dir / "flow"))
    try:
        plan = store.current_plan()
        node = next(n for n in plan.graph.nodes if n.startswith(node_prefix))
        record = store.record(plan.plan_id, node)
        record.state, record.error, record.exit_code = "failed", f"{type(error).__name__}: {error}", exit_code_of(error)
        store.put_record(plan.plan_id, node, record)
        store.fail_attempt(plan.plan_id, node, f"{node}: {error}", permanent=True)
    finally:
        store.close()


def node_state(device: Device, node_prefix: str) -> str | None:
    """The state of the first node whose id starts with `node_prefix`, in the plan in progress."""
    found = in_progress(device)
    node_id = next((n for n in found[0].graph.nodes if n.startswith(node_prefix)), None) if found else None
    return found[1][node_id] if node_id else None


def shellhttpd_running(engine) -> list[str]:
    """The running containers of the sample app, by image ID."""
    return [c.attrs["Image"] for c in engine.containers.list(filters={"label": "com.docker.compose.project=shellhttpd"})]


def resume(device: Device) -> None:
    done = device.run("resume")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="session")
def big_release(factory) -> str:
    publish(factory.home.root, 1, {"shellhttpd": "shellhttpd/v1", "pair": "pair/v1"}, BIG_TAG,
            "--layer-mb", f"shellhttpd={BIG_MB}", "--hwid", BIG_HWID)
    return BIG_TAG


def big_device(factory, tmp_path: Path, rate: str) -> Device:
    """A device on the big release, its downloads limited to `rate` (a drop-in, the last one)."""
    device = new_device(factory.info, tmp_path / "sota", "--tag", BIG_TAG, "--hwid", BIG_HWID)
    (tmp_path / "rate.toml").write_text(f'[pacman]\ndownload_rate_limit = "{rate}"\n')
    device.drop_ins.append(tmp_path / "rate.toml")
    return device


def partials(device: Device) -> dict[str, int]:
    """Bytes on disk of each partial download, by digest."""
    ingest = device.sota_dir / "reset-apps" / "ingest"
    found = ingest.glob("*/data") if ingest.exists() else []
    return {f"sha256:{p.parent.name}": p.stat().st_size for p in found}


def committed(device: Device) -> dict[str, int]:
    """Size of each blob in the store, by digest."""
    blobs = device.sota_dir / "reset-apps" / "blobs" / "sha256"
    return {f"sha256:{p.name}": p.stat().st_size for p in blobs.iterdir()} if blobs.exists() else {}


def wait_for_a_big_partial(device: Device, least: int) -> None:
    wait_for(lambda: max(partials(device).values(), default=0) > least, 120, f"a large blob {least} bytes in")


def resume_fetching_only_what_was_not_kept(factory, device: Device, kept: dict[str, int]) -> None:
    """Resume; no blob verified before is fetched again, and a partial resumes from its length
    (bytes counted where the registry sends them, from its own log)."""
    finished = set(committed(device))
    time.sleep(1)  # let the registry log the responses the stop cut short
    before = len(registry_blob_gets(factory.home))
    resume(device)
    after = registry_blob_gets(factory.home)[before:]
    assert not finished & {digest for digest, _ in after}, "a blob verified before the stop is fetched again"
    sizes = committed(device)
    for digest, on_disk in kept.items():
        resumed = sum(written for d, written in after if d == digest)  # 0 if it was whole, only uncommitted
        assert resumed <= sizes[digest] - on_disk, f"{digest}: the resume asks only for the bytes not kept"
        print(f"\n{digest[:19]}: {on_disk} of {sizes[digest]} bytes kept, {resumed} fetched on resume")


def test_a_kill_mid_blob_resumes_that_blob_and_fetches_no_finished_blob_again(factory, big_release, engine,
                                                                              tmp_path: Path) -> None:
    device = big_device(factory, tmp_path, "24M")
    process = start_apply(device)
    wait_for_a_big_partial(device, 2 * SYNC_EVERY)
    kill(process)
    resume_fetching_only_what_was_not_kept(factory, device, partials(device))
    assert "v1" in sample_page()


def test_sigterm_mid_download_stops_at_the_next_chunk_keeps_the_partial_and_resume_fetches_the_rest(
        factory, big_release, engine, tmp_path: Path) -> None:
    device = big_device(factory, tmp_path, "4M")  # the 48 MB layer takes 12 s
    process = start_apply(device)
    wait_for_a_big_partial(device, SYNC_EVERY)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    took = time.monotonic() - started
    print(f"\nSIGTERM mid-download: exit {code} after {took:.2f} s")
    assert code == 143
    assert took < 2.0, f"the download went on for {took:.1f} s after SIGTERM"
    kept = partials(device)
    big = max(kept, key=kept.get)
    assert kept[big] > SYNC_EVERY and node_state(device, f"fetch:{big}") == "pending"
    device.drop_ins.pop()  # the rest at full speed
    resume_fetching_only_what_was_not_kept(factory, device, kept)
    assert "v1" in sample_page()


def test_cancel_from_another_process_stops_a_download_at_its_next_chunk_and_drops_its_partial(
        factory, big_release, engine, tmp_path: Path) -> None:
    device = big_device(factory, tmp_path, "4M")
    process = start_apply(device)
    wait_for_a_big_partial(device, SYNC_EVERY)
    done = device.run("cancel")
    started = time.monotonic()
    assert "Cancel requested" in done.stdout, done.stdout + done.stderr
    code = process.wait(timeout=60)
    took = time.monotonic() - started
    print(f"\ncancel mid-download: exit {code} after {took:.2f} s")
    assert code == 1 and took < 2.0, f"exit {code} {took:.1f} s after the cancel"
    assert partials(device) == {}, "the partial of a cancelled update is kept"
    status = device.json("status", "--json")
    assert status["in_progress"] is None and status["history"][0]["outcome"] == "cancelled"


def kill_while_replacing(device: Device, engine) -> None:
    """Apply version 2 over 1 and cut it, compose with it as a power cut would, while the start node
    replaces the old shellhttpd (its `compose up` stops each old container as it recreates it);
    fails if the cut landed elsewhere."""
    assert device.run("apply", "1").returncode == 0
    process = start_apply(device, "2")
    wait_for(lambda: node_state(device, "start:shellhttpd") == "running", 120, "shellhttpd being replaced")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert node_state(device, "start:shellhttpd") == "running", "the cut landed while shellhttpd was replaced"


def test_a_kill_while_the_new_version_replaces_the_old_one(device, engine) -> None:
    kill_while_replacing(device, engine)
    resume(device)
    assert "v2" in sample_page()
    assert device.json("status", "--json")["current"]["version"] == 2


def test_an_event_the_gateway_got_but_the_device_never_heard_back_about_is_recorded_once(factory, device) -> None:
    """Kill right after an event was sent and before its node was checkpointed: sent twice, kept once."""
    records = DeviceRecords(factory.home)
    uuid = records.find(device.name)["uuid"]
    faults = Faults(factory.home)
    faults.set(events_delay_s=30)  # the gateway records each event, then keeps the device waiting
    try:
        process = start_apply(device, "1")
        wait_for(lambda: any(e["eventType"]["id"] == "UpdateInitStarted" for e in records.events(uuid)), 60,
                 "the gateway to record UpdateInitStarted")
        kill(process)
    finally:
        faults.clear()
    assert node_state(device, "report:UpdateInitStarted") != "done"
    resume(device)
    events = records.events(uuid)
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), "an event recorded twice"
    first = next(e["id"] for e in events if e["eventType"]["id"] == "UpdateInitStarted")
    deliveries = [d for d in records.log(uuid, "deliveries") if first in d["ids"]]
    assert len(deliveries) == 2, "the event was sent once more after the kill, and kept once"
    assert [e["eventType"]["id"] for e in events][-1] == "EcuInstallationCompleted"


def test_cancelling_an_update_cut_while_replacing_an_app_brings_the_old_version_back(device, engine) -> None:
    kill_while_replacing(device, engine)
    done = device.run("cancel")
    assert done.returncode == 0, done.stderr
    assert "Restored" in done.stdout
    assert "v1" in sample_page()
    status = device.json("status", "--json")
    assert status["current"]["version"] == 1 and status["in_progress"] is None
    assert {a["name"]: a["state"] for a in status["apps"]} == {"pair": "running", "shellhttpd": "running"}


def test_an_update_cut_after_its_commit_is_history_and_an_app_stopped_since_stays_as_it_is(factory, device,
                                                                                          engine) -> None:
    """Once the commit is recorded, resume finishes the update without judging the apps again:
    an app stopped by hand after the commit neither fails the update nor is started by it."""
    assert device.run("apply", "1").returncode == 0
    faults = Faults(factory.home)
    process = start_apply(device, "2")
    try:
        wait_for(lambda: node_state(device, "start:shellhttpd") == "done", 120, "the new shellhttpd started")
        faults.set(events_delay_s=30)  # the next report, right after the commit, keeps the device waiting
        wait_for(lambda: node_state(device, "commit:") == "done", 120, "the commit")
        kill(process)
    finally:
        faults.clear()
    for container in engine.containers.list(filters={"label": "com.docker.compose.project=shellhttpd"}):
        container.stop()  # `docker stop` by hand
    resume(device)
    status = device.json("status", "--json")
    assert status["in_progress"] is None and status["history"][0]["outcome"] == "completed"
    assert status["current"]["version"] == 2
    assert {a["name"]: a["state"] for a in status["apps"]} == {"pair": "running", "shellhttpd": "stopped"}
    assert not engine.containers.list(filters={"label": "com.docker.compose.project=shellhttpd"})


def test_a_partial_no_update_needs_is_gone_after_the_next_completed_update_even_one_fetching_nothing(
        device, engine) -> None:
    assert device.run("apply", "1").returncode == 0
    abandoned = device.sota_dir / "reset-apps" / "ingest" / ("ab" * 32) / "data"
    abandoned.parent.mkdir(parents=True)
    abandoned.write_bytes(os.urandom(100_000))  # what an update abandoned mid-download leaves
    for container in engine.containers.list(filters={"label": "com.docker.compose.project=shellhttpd"}):
        container.stop()  # so that `apply 1` repairs the app: a plan that fetches nothing
    assert device.run("apply", "1").returncode == 0
    assert "v1" in sample_page()
    assert partials(device) == {}
