"""An update in progress is checked against the factory's Targets again when it goes on (`resume`,
or an `apply` that continues it). If its Target was withdrawn or changed before it stopped or
started an app, it is cancelled, with the reason in `status` and in the report; once an app was
stopped, it is finished; with the gateway out of reach, the frozen plan goes on.

Each update is interrupted the way a shutdown interrupts it: SIGTERM while a large layer
downloads (a rate limit keeps it slow), so no app has been stopped yet.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from faults.netproxy import FaultProxy
from support import BIN, Device, fresh_device, largest_partial, publish, sample_page
from test_crash import kill, node_state, start_apply, wait_for

from fioup_flow.factory.devices import DeviceRecords

pytestmark = [pytest.mark.factory, pytest.mark.docker]

TAG = "recheck"
HWID = "recheck-linux"  # a hardware id of its own: its versions and withdrawals touch no other test
MIB = 1024 * 1024
BIG_MB = 48
V1 = {"shellhttpd": "shellhttpd/v1", "pair": "pair/v1"}
BIG_V2 = {"shellhttpd": "shellhttpd/v2", "pair": "pair/v1"}  # shellhttpd with a large layer, see below


@pytest.fixture(scope="module")
def recheck_release(factory) -> None:
    publish(factory.home.root, 1, V1, TAG, "--hwid", HWID)


@pytest.fixture
def device_on_v1(factory, recheck_release, engine, tmp_path: Path) -> Iterator[Device]:
    """A device running version 1, whose downloads are limited to 8 MB/s from now on."""
    with fresh_device(factory, engine, tmp_path / "sota", TAG, HWID) as device:
        assert device.run("apply", "1").returncode == 0
        (tmp_path / "rate.toml").write_text('[pacman]\ndownload_rate_limit = "8M"\n')
        device.drop_ins.append(tmp_path / "rate.toml")
        yield device


def publish_big(factory, version: int) -> None:
    publish(factory.home.root, version, BIG_V2, TAG, "--hwid", HWID, "--layer-mb", f"shellhttpd={BIG_MB}")


def withdraw(factory, version: int) -> None:
    done = subprocess.run([str(BIN / "fioup-flow-factory"), "withdraw", "--home", str(factory.home.root),
                           "--version", str(version), "--hwid", HWID], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def fetched_partly(device: Device) -> bool:
    """A download in progress holds more than 4 MiB."""
    return largest_partial(device) > 4 * MIB


def interrupted_mid_download(device: Device, version: int) -> str:
    """`apply VERSION`, stopped by SIGTERM while it downloads; returns the id of the update left in progress."""
    process = start_apply(device, str(version))
    wait_for(lambda: fetched_partly(device), 120, "the large layer partly fetched")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    assert node_state(device, "start:shellhttpd") == "pending", "no app was replaced"
    return device.json("status", "--json")["in_progress"]["plan_id"]


def containers(engine: docker.DockerClient) -> dict[str, tuple[str, str]]:
    """Every running container: name -> (id, start time)."""
    return {c.name: (c.id, c.attrs["State"]["StartedAt"]) for c in engine.containers.list()}


def events_of(factory, device: Device, plan_id: str) -> list[dict]:
    """What the gateway recorded for update `plan_id` (its correlation id), in order."""
    records = DeviceRecords(factory.home)
    return [e for e in records.events(records.find(device.name)["uuid"]) if e["event"]["correlationId"] == plan_id]


def test_an_update_whose_target_was_withdrawn_is_cancelled_at_resume_with_the_reason(
        factory, engine, device_on_v1) -> None:
    before = containers(engine)
    publish_big(factory, 4)
    plan_id = interrupted_mid_download(device_on_v1, 4)
    withdraw(factory, 4)

    done = device_on_v1.run("resume")
    assert done.returncode == 23, done.stdout + done.stderr
    assert "was withdrawn from the factory" in done.stderr
    assert containers(engine) == before, "version 1 was never stopped nor restarted"
    assert "v1" in sample_page()
    status = device_on_v1.json("status", "--json")
    assert status["in_progress"] is None and status["current"]["version"] == 1
    cancelled = status["history"][0]
    assert (cancelled["plan_id"], cancelled["outcome"]) == (plan_id, "cancelled")
    assert "recheck-linux-lmp-4 (version 4) was withdrawn" in cancelled["reason"]
    assert "was withdrawn from the factory" in device_on_v1.run("status").stdout
    last = events_of(factory, device_on_v1, plan_id)[-1]
    assert last["eventType"]["id"] == "EcuDownloadCompleted" and last["event"]["success"] is False
    assert "cancelled: Target recheck-linux-lmp-4 (version 4) was withdrawn" in last["event"]["details"]


def test_an_update_whose_target_changed_is_cancelled_when_apply_goes_on_with_it(
        factory, engine, device_on_v1) -> None:
    before = containers(engine)
    publish_big(factory, 5)
    plan_id = interrupted_mid_download(device_on_v1, 5)
    publish(factory.home.root, 5, {"shellhttpd": "shellhttpd/v1", "ticker": "ticker/v1"}, TAG, "--hwid", HWID)

    done = device_on_v1.run("apply")
    assert done.returncode == 23, done.stdout + done.stderr
    assert "changed in the factory since this update was planned: app(s) pair, shellhttpd, ticker differ" \
        in done.stderr
    assert containers(engine) == before, "version 1 was never stopped nor restarted"
    history = device_on_v1.json("status", "--json")["history"][0]
    assert (history["plan_id"], history["outcome"]) == (plan_id, "cancelled")
    assert events_of(factory, device_on_v1, plan_id)[-1]["event"]["success"] is False
    assert device_on_v1.run("apply").returncode == 0, "the way out the message names works"
    assert {c.labels["com.docker.compose.project"] for c in engine.containers.list()} == {"shellhttpd", "ticker"}


def test_an_update_that_stopped_an_app_is_finished_though_its_target_was_withdrawn(
        factory, engine, device_on_v1) -> None:
    publish_big(factory, 6)
    process = start_apply(device_on_v1, "6")
    wait_for(lambda: node_state(device_on_v1, "start:shellhttpd") == "done", 180, "the new shellhttpd started")
    kill(process)
    withdraw(factory, 6)

    done = device_on_v1.run("resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "v2" in sample_page()
    assert device_on_v1.json("status", "--json")["current"]["version"] == 6


def test_with_the_gateway_out_of_reach_resume_goes_on_with_the_frozen_plan(
        factory, engine, device_on_v1, tmp_path: Path) -> None:
    publish_big(factory, 7)
    plan_id = interrupted_mid_download(device_on_v1, 7)
    withdraw(factory, 7)  # which the device, cut off, cannot learn

    gateway_port = int(factory.info["gateway"].rsplit(":", 1)[1])
    with FaultProxy(gateway_port, lifetime=240) as gateway:
        (tmp_path / "z-gateway.toml").write_text(f'[tls]\nserver = "https://127.0.0.1:{gateway.port}"\n')
        device_on_v1.drop_ins.append(tmp_path / "z-gateway.toml")
        # the check's one attempt finds the link down; the update's own calls, later, get through
        gateway.set(close_on_accept=1)
        done = device_on_v1.run("resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "could not be checked again" in done.stderr and "going on with the frozen plan" in done.stderr
    assert "v2" in sample_page()
    status = device_on_v1.json("status", "--json")
    assert status["current"]["version"] == 7
    assert (status["history"][0]["plan_id"], status["history"][0]["outcome"]) == (plan_id, "completed")
