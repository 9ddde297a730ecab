"""A device goes from whatever it runs to a chosen Target, on a real engine, from a real registry.

Each test starts from a freshly registered device on an empty engine; the sample releases are:
v1 = shellhttpd v1 + pair v1, v2 = shellhttpd v2 + pair v1, v3 = shellhttpd v2 + ticker v1.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest
from support import SHELLHTTPD_PORT, sample_page

from fioup_flow.factory.devices import DeviceRecords

pytestmark = [pytest.mark.factory, pytest.mark.docker]

UPDATE_EVENTS = ["UpdateInitStarted", "UpdateInitCompleted", "EcuDownloadStarted", "EcuDownloadCompleted",
                 "EcuInstallationStarted", "EcuInstallationApplied", "EcuInstallationCompleted"]


def containers(engine: docker.DockerClient) -> dict[str, tuple[str, str]]:
    """service container name -> (id, start time), for every running container."""
    return {c.name: (c.id, c.attrs["State"]["StartedAt"]) for c in engine.containers.list()}


def projects(engine: docker.DockerClient) -> set[str]:
    return {c.labels.get("com.docker.compose.project") for c in engine.containers.list()}


def apply(device, *args: str) -> None:
    done = device.run("apply", *args)
    assert done.returncode == 0, done.stdout + done.stderr


def events(factory, device) -> list[dict]:
    records = DeviceRecords(factory.home)
    return records.events(records.find(device.name)["uuid"])


def test_a_fresh_device_gets_the_latest_target_with_every_app_running(device, engine, factory) -> None:
    apply(device, "1")
    assert projects(engine) == {"shellhttpd", "pair"}
    assert "v1" in sample_page()
    status = device.json("status", "--json")
    assert status["current"]["version"] == 1
    assert {a["name"]: a["state"] for a in status["apps"]} == {"pair": "running", "shellhttpd": "running"}
    sent = events(factory, device)
    assert [e["eventType"]["id"] for e in sent] == ["MetadataUpdateCompleted", *UPDATE_EVENTS]
    assert len({e["id"] for e in sent}) == len(sent)
    assert all(e["event"]["success"] is not False for e in sent)


def test_an_app_that_does_not_change_is_not_touched(device, engine) -> None:
    apply(device, "1")
    before = {name: c for name, c in containers(engine).items() if name.startswith("pair")}
    apply(device, "2")
    assert "v2" in sample_page()
    after = {name: c for name, c in containers(engine).items() if name.startswith("pair")}
    assert after == before and len(before) == 2


def test_an_app_dropped_by_the_target_goes_and_a_new_one_comes(device, engine) -> None:
    apply(device, "2")
    apply(device, "3")
    assert projects(engine) == {"shellhttpd", "ticker"}
    assert not (device.sota_dir / "compose-apps" / "pair").exists()


def test_an_app_disabled_in_the_config_is_stopped_and_removed(device, engine) -> None:
    apply(device, "3")
    conf_d = device.sota_dir / "conf.d"
    conf_d.mkdir()
    (conf_d / "z-50-fioctl.toml").write_text('[pacman]\ncompose_apps = "shellhttpd"\n')
    device.drop_ins.append(conf_d)
    apply(device)
    assert projects(engine) == {"shellhttpd"}
    assert [a["name"] for a in device.json("status", "--json")["apps"]] == ["shellhttpd"]


def test_a_downgrade_goes_back_to_the_older_target(device, engine) -> None:
    apply(device, "2")
    apply(device, "1")
    assert "v1" in sample_page()
    assert device.json("status", "--json")["current"]["version"] == 1


def timed_compose(folder: Path) -> Path:
    """The real compose behind a wrapper that logs when each run began and ended, and its arguments.
    Returns the log: lines `<begin> <end> <args>`, seconds since the epoch."""
    folder.mkdir(parents=True)
    log = folder / "runs.log"
    (folder / "docker-compose").write_text(
        f'#!/bin/sh\nbegan=$(date +%s.%N)\n{shutil.which("docker-compose")} "$@"\ncode=$?\n'
        f'echo "$began $(date +%s.%N) $*" >> {log}\nexit $code\n')
    (folder / "docker-compose").chmod(0o755)
    return log


def test_an_app_is_replaced_by_one_compose_up_and_composes_run_one_at_a_time(device, engine, tmp_path) -> None:
    """Updated apps are not stopped first (compose up replaces their containers, the shortest
    downtime), and nodes running side by side never run two composes at once (memory)."""
    apply(device, "1")
    log = timed_compose(tmp_path / "compose")
    done = device.run("apply", "3", env={"PATH": f"{log.parent}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stdout + done.stderr
    runs = [line.split(maxsplit=2) for line in log.read_text().splitlines()]
    verbs = sorted(" ".join(w for w in args.split() if w in ("up", "stop", "down")) for _, _, args in runs)
    assert verbs == ["", "", "", "down", "up", "up"], "config per install, `up` per app started, `down` for pair"
    spans = sorted((float(began), float(ended)) for began, ended, _ in runs)
    assert all(ended <= next_began for (_, ended), (next_began, _) in zip(spans, spans[1:])), spans
    assert projects(engine) == {"shellhttpd", "ticker"} and "v2" in sample_page()


def test_dry_run_prints_the_plan_and_changes_nothing(device, engine) -> None:
    summary = device.json("apply", "1", "--dry-run", "--json")
    assert summary["bytes_to_download"] > 0 and summary["diff"]["add"] == ["pair", "shellhttpd"]
    assert projects(engine) == set()
    assert device.run("resume").stdout.strip() == "No update in progress"


def test_a_port_another_program_holds_fails_the_start_at_once_with_70_and_resume_completes_once_freed(
        device, engine) -> None:
    with socket.socket() as holder:  # another program on the port shellhttpd publishes
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the last test's TIME_WAIT
        holder.bind(("127.0.0.1", SHELLHTTPD_PORT))
        holder.listen()
        done = device.run("apply", "1")
    assert done.returncode == 70, done.stderr
    assert "address already in use" in done.stderr and "within" not in done.stderr, \
        "the engine's own error, at once, not after waiting out the start timeout"
    assert device.run("resume").returncode == 0
    assert "v1" in sample_page()


@contextmanager
def address_pool_taken(engine) -> Iterator[None]:
    """The engine's whole address pool held by one network whose subnet spans it (the test engine's
    pool is a /16 cut into /24s): every subnet the engine could give an app's network overlaps it."""
    probe = engine.networks.create("probe", driver="bridge")
    probe.reload()
    pool = ipaddress.ip_network(probe.attrs["IPAM"]["Config"][0]["Subnet"]).supernet(new_prefix=16)
    probe.remove()
    filler = engine.networks.create("filler", driver="bridge", ipam=docker.types.IPAMConfig(
        pool_configs=[docker.types.IPAMPool(subnet=str(pool))]))
    try:
        with pytest.raises(docker.errors.APIError, match="address pool|available"):
            engine.networks.create("one-more", driver="bridge")
        yield
    finally:
        filler.remove()


def test_an_engine_that_cannot_give_the_app_a_network_fails_the_start_with_70_and_resume_completes_after(
        device, engine) -> None:
    """The engine refusing the app a network is the engine's trouble, not the Target's (and some
    compose versions exit 0 on it: the start node must not take that for done)."""
    with address_pool_taken(engine):
        done = device.run("apply", "1")
    assert done.returncode == 70, done.stderr
    assert "compose up left no container for" in done.stderr
    assert device.run("resume").returncode == 0
    assert "v1" in sample_page()


def test_an_app_on_a_network_the_engine_lost_is_recreated_and_started(device, engine) -> None:
    """A power cut can cost the engine its network database (or an operator moves it aside so that
    dockerd starts): the app's containers then name a network that is gone, and compose, seeing
    their config unchanged, would start them as they are, forever failing."""
    assert device.run("apply", "1").returncode == 0
    for container in engine.containers.list(filters={"label": "com.docker.compose.project=shellhttpd"}):
        container.stop(timeout=1)
    engine.networks.get("shellhttpd_default").remove()

    done = device.run("apply", "1")  # the app is not up: the plan repairs it
    assert done.returncode == 0, done.stderr
    assert "v1" in sample_page()
