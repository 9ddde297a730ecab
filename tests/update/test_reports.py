"""What the gateway hears of a device's updates, judged by the local gateway's own records.

- a report the gateway refuses for good is set aside (shown by `status`) and holds back nothing;
- a gateway that is out of reach costs a run one retry budget, not one per report, and hears
  every event once it is back;
- each attempt at an update is an update of its own for the gateway (fioup opens one per try);
- fioup's check-in headers, system info and apps-states: sent when they change, around every run.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest
import requests
from faults.netproxy import FaultProxy
from support import BIN, SHELLHTTPD_PORT, Device, free_port, sample_page

from fioup_flow.factory.devices import DeviceRecords
from fioup_flow.factory.faults import Faults
from fioup_flow.outbox import EVENTS, Outbox, outbox_path

pytestmark = [pytest.mark.factory, pytest.mark.docker]

UPDATE_EVENTS = ["UpdateInitStarted", "UpdateInitCompleted", "EcuDownloadStarted", "EcuDownloadCompleted",
                 "EcuInstallationStarted", "EcuInstallationApplied", "EcuInstallationCompleted"]
BUDGET_S = 5  # FIOUP_FLOW_RETRY_SECONDS for the dead-gateway test
MAX_TRIES_PER_BUDGET = 8  # retry.retrying's max_attempts
EVENTS_DELAY_S = 8


def records(factory) -> DeviceRecords:
    return DeviceRecords(factory.home)


def uuid_of(factory, device: Device) -> str:
    return records(factory).find(device.name)["uuid"]


def update_events(factory, device: Device) -> list[dict]:
    return [e for e in records(factory).events(uuid_of(factory, device))
            if e["eventType"]["id"] != "MetadataUpdateCompleted"]


def by_correlation(events: list[dict]) -> dict[str, list[tuple[str, bool | None]]]:
    """correlation id -> [(event type, success)] in the order the gateway recorded them."""
    out: dict[str, list[tuple[str, bool | None]]] = {}
    for e in events:
        out.setdefault(e["event"]["correlationId"], []).append((e["eventType"]["id"], e["event"]["success"]))
    return out


@contextmanager
def port_held() -> Iterator[None]:
    """Another program on the port the sample shellhttpd publishes: its start fails (exit 70)."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", SHELLHTTPD_PORT))
        holder.listen()
        yield


def serving_v1() -> bool:
    try:
        return "v1" in sample_page()
    except requests.RequestException:
        return False


def failed_start(device: Device) -> None:
    """`apply 1` that fetches and installs everything, then fails to start shellhttpd (exit 70)."""
    with port_held():
        done = device.run("apply", "1")
    assert done.returncode == 70, done.stdout + done.stderr


# --- issue 9, item 6: a refused report holds back nothing ---------------------------------------

def test_a_report_the_gateway_refuses_is_set_aside_shown_by_status_and_every_later_event_arrives(
        device, factory) -> None:
    # An event as an older agent could have queued it: the event type's version as text. The real
    # gateway (dg-satellite) cannot decode that into its Go type and answers 400 to the whole batch.
    bad = {"id": "f0e1d2c3-0000-4000-8000-000000000001", "deviceTime": "2026-01-01T00:00:00+00:00",
           "eventType": {"id": "EcuDownloadStarted", "version": "2"},
           "event": {"correlationId": "old-update", "success": None, "targetName": "t", "version": "1",
                     "details": ""}}
    outbox = Outbox(outbox_path(device.sota_dir / "flow"))
    outbox.put(bad["id"], EVENTS, bad)
    outbox.close()

    done = device.run("apply", "1")
    assert done.returncode == 0, done.stderr
    sent = update_events(factory, device)
    assert [kind for kind, _ in next(iter(by_correlation(sent).values()))] == UPDATE_EVENTS
    assert bad["id"] not in {e["id"] for e in sent}

    status = device.json("status", "--json")
    assert status["reports"]["pending"] == 0
    ((aside,),) = [status["reports"]["set_aside"]]
    assert aside["id"] == bad["id"] and aside["status"] == 400 and "400" in aside["reason"]
    text = device.run("status").stdout
    assert "refused" in text and bad["id"] in text


# --- issue 9, item 7: a dead gateway costs one budget per run ---------------------------------

def test_a_run_against_a_dead_gateway_waits_out_one_retry_budget_not_one_per_report_and_loses_nothing(
        device, factory, tmp_path: Path) -> None:
    failed_start(device)  # everything fetched: the resume below needs no registry credentials
    gateway_port = int(factory.info["gateway"].rsplit(":", 1)[1])
    with FaultProxy(gateway_port, lifetime=300) as proxy:  # the device's way to its gateway, refusing all
        proxy.set(close_on_accept=1_000_000)
        link = tmp_path / "z-90-link.toml"
        link.write_text(f'[tls]\nserver = "https://127.0.0.1:{proxy.port}"\n')
        device.drop_ins.append(link)
        start = time.monotonic()
        done = device.run("resume", env={"FIOUP_FLOW_RETRY_SECONDS": str(BUDGET_S)})
        took = time.monotonic() - start
        tries = proxy.stats.connections
        device.drop_ins.remove(link)
    print(f"\nresume against a dead gateway: {took:.1f} s, {tries} connections, budget {BUDGET_S} s")
    assert done.returncode == 0, done.stderr
    assert "v1" in sample_page()
    waiting = int(re.search(r"(\d+) report\(s\) wait in the outbox", done.stderr)[1])
    assert waiting >= len(UPDATE_EVENTS), done.stderr
    # One budget holds at most 8 tries (retry.py); then a single try per budget. Ten flushes that
    # each waited out a budget of their own made 20 tries and more, and took minutes at 60 s each.
    assert tries <= MAX_TRIES_PER_BUDGET + 3, f"{tries} connections: the dead gateway was retried per report"
    assert took < 3 * BUDGET_S + 10, f"{took:.1f} s"

    assert device.run("resume").returncode == 0  # nothing in progress: delivers what waits
    sent = update_events(factory, device)
    assert len({e["id"] for e in sent}) == len(sent), "each event once"
    attempts = list(by_correlation(sent).values())
    assert [kind for kind, _ in attempts[-1]] == UPDATE_EVENTS and attempts[-1][-1][1] is True
    assert device.json("status", "--json")["reports"]["pending"] == 0


def test_a_gateway_slow_to_answer_does_not_delay_the_start_of_the_apps(device, factory) -> None:
    """After a failed start the next attempt sends its reports again before it starts the apps
    (at boot, with the apps down): they go out in the background, not in the apps' way."""
    failed_start(device)
    faults = Faults(factory.home)
    faults.set(events_delay_s=EVENTS_DELAY_S)  # the gateway records each batch, then answers late
    try:
        cfg_dirs = ",".join(str(p) for p in [device.cfg, *device.drop_ins])
        start = time.monotonic()
        process = subprocess.Popen([str(BIN / "fioup-flow"), "-c", cfg_dirs, "resume"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        while not serving_v1():
            assert process.poll() is None and time.monotonic() - start < 120, "resume ended, v1 never answered"
            time.sleep(0.1)
        up = time.monotonic() - start
        assert process.wait(timeout=300) == 0
    finally:
        faults.clear()
    print(f"\nv1 answered {up:.1f} s after resume, the gateway answering each batch {EVENTS_DELAY_S} s late")
    assert up < EVENTS_DELAY_S, "six report nodes stand before the start: each waited for the gateway"
    sent = update_events(factory, device)
    assert [kind for kind, _ in list(by_correlation(sent).values())[-1]] == UPDATE_EVENTS


# --- issue 9, item 8: one correlation id per attempt ----------------------------------------

def test_a_failed_update_resumed_is_two_attempts_each_with_its_own_correlation_id_and_each_event_once(
        device, factory) -> None:
    failed_start(device)
    done = device.run("resume")
    assert done.returncode == 0, done.stderr

    sent = update_events(factory, device)
    assert len({e["id"] for e in sent}) == len(sent), "each event once"
    first, second = by_correlation(sent).values()
    assert [kind for kind, _ in first] == UPDATE_EVENTS and first[-1][1] is False, "attempt 1 ends failed"
    assert all(success is not False for _, success in first[:-1])
    assert [kind for kind, _ in second] == UPDATE_EVENTS, "attempt 2 is an update of its own, from its start"
    assert all(success is not False for _, success in second) and second[-1][1] is True
    (done_update,) = device.json("status", "--json", "--history", "1")["history"]
    assert done_update["attempts"] == 2 and done_update["correlation_id"] == sent[-1]["event"]["correlationId"]


def test_a_run_cut_short_goes_on_with_the_same_attempt(device, factory) -> None:
    cfg_dirs = ",".join(str(p) for p in [device.cfg, *device.drop_ins])
    process = subprocess.Popen([str(BIN / "fioup-flow"), "-c", cfg_dirs, "apply", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(e["eventType"]["id"] == "EcuDownloadStarted" for e in update_events(factory, device)):
        assert time.monotonic() < deadline, "the update never started"
        time.sleep(0.05)
    process.kill()  # as a power cut would: no run ended failed
    process.wait(timeout=30)
    done = device.run("resume")
    assert done.returncode == 0, done.stderr
    sent = update_events(factory, device)
    ((correlation, kinds),) = by_correlation(sent).items()
    assert [kind for kind, _ in kinds] == UPDATE_EVENTS and len({e["id"] for e in sent}) == len(sent)


# --- issue 10, item 7: headers, system info and apps-states as fioup sends them ---------------

def test_the_check_in_headers_name_what_runs_and_change_once_the_new_target_started(device, factory) -> None:
    assert device.run("apply", "1").returncode == 0
    uuid = uuid_of(factory, device)
    v1 = device.json("status", "--json")["current"]["target"]
    checkin = records(factory).get(uuid)["checkin"]
    assert checkin["target"] == v1 and set(checkin["apps"].split(",")) == {"pair", "shellhttpd"}
    assert checkin["tag"] == "updates"
    targets = {e: d["target"] for d in records(factory).log(uuid, "deliveries") for e in d["ids"]}
    kinds = {e["id"]: e["eventType"]["id"] for e in records(factory).events(uuid)}
    by_kind = {kinds[e]: t for e, t in targets.items()}
    assert by_kind["EcuInstallationApplied"] is None, "a fresh device runs no Target until the start"
    assert by_kind["EcuInstallationCompleted"] == v1, "after the start, the gateway hears the new Target"

    assert device.run("apply", "2").returncode == 0
    v2 = device.json("status", "--json")["current"]["target"]
    assert records(factory).get(uuid)["checkin"]["target"] == v2


def test_system_info_is_uploaded_before_a_run_only_when_it_changed(device, factory, tmp_path: Path) -> None:
    uuid = uuid_of(factory, device)
    assert device.run("apply", "1").returncode == 0
    files = {kind: records(factory).home.device_dir(uuid) / name for kind, name in
             (("", "system_info.json"), ("network", "system_info_network.json"), ("config", "system_info_config.toml"))}
    config = tomllib.loads(records(factory).system_info(uuid, "config").decode())
    assert config["tls"]["server"] == factory.info["gateway"]
    network = records(factory).system_info(uuid, "network")
    assert b"hostname" in network and b"local_ipv4" in network
    uploaded = {kind: path.stat().st_mtime_ns for kind, path in files.items()}

    assert device.run("apply", "2").returncode == 0
    assert {kind: path.stat().st_mtime_ns for kind, path in files.items()} == uploaded, "nothing changed, nothing sent"

    drop_in = tmp_path / "z-60-more.toml"
    drop_in.write_text('[pacman]\ndownload_rate_limit = "500M"\n')
    device.drop_ins.append(drop_in)
    assert device.run("apply", "3").returncode == 0
    assert tomllib.loads(files["config"].read_text())["pacman"]["download_rate_limit"] == "500M"
    assert files[""].stat().st_mtime_ns == uploaded[""] and files["network"].stat().st_mtime_ns == uploaded["network"]


def apps_states(factory, device: Device) -> list[dict[str, tuple[str, str]]]:
    """Each apps-states report the gateway recorded: app -> (state, uri)."""
    return [{name: (app["state"], app["uri"]) for name, app in report["apps"].items()}
            for report in records(factory).apps_states(uuid_of(factory, device))]


def test_apps_states_are_posted_before_and_after_each_run_a_failed_one_too_and_only_when_they_changed(
        device, factory, engine: docker.DockerClient) -> None:
    assert device.run("apply", "1").returncode == 0
    (v1,) = apps_states(factory, device)  # a fresh device has no apps to tell of before its first run
    assert {state for state, _ in v1.values()} == {"healthy"}

    assert device.run("apply", "1").stdout.startswith("Already running")
    assert device.run("resume").returncode == 0
    assert len(apps_states(factory, device)) == 1, "nothing changed, nothing sent"

    assert device.run("apply", "2").returncode == 0
    v2 = apps_states(factory, device)[-1]
    assert len(apps_states(factory, device)) == 2 and {state for state, _ in v2.values()} == {"healthy"}
    assert v2["shellhttpd"][1] != v1["shellhttpd"][1], \
        "another version with as many services is a change (fioup's rule, counts and states, misses it)"

    for container in engine.containers.list(filters={"label": "com.docker.compose.project=pair"}):
        container.stop(timeout=1)  # the device changed by itself since the last report
    held = free_port()
    held_port = device.sota_dir / "z-held-port.toml"  # a drop-in that wins over the device's own port
    held_port.write_text(f'[compose_env]\nSHELLHTTPD_PORT = "{held}"\n')
    device.drop_ins.append(held_port)
    with socket.socket() as holder:  # ...and shellhttpd v1 will not start: the downgrade fails
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", held))
        holder.listen()
        done = device.run("apply", "1")
    device.drop_ins.remove(held_port)
    assert done.returncode == 70, done.stderr
    before, after = apps_states(factory, device)[2:]
    assert before["pair"][0] == "unhealthy" and before["shellhttpd"][0] == "healthy", "before the run"
    assert after["shellhttpd"][0] == "unhealthy", "after the failed run: v2 stopped, v1 not started"

    assert device.run("resume").returncode == 0
    final = apps_states(factory, device)[-1]
    assert final == v1 and "v1" in sample_page()
