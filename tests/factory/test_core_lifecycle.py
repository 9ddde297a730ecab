"""`fioup-flow-factory up / status / down` with real processes: idempotent, stable, stoppable."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import requests
from core_factory import factory_cli, start_factory, stop_factory

from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.process import process_running, stop_process

SERVICES = ("factory-server", "registry", "thirdparty")


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _status(home) -> dict:
    return json.loads(factory_cli("status", "--home", str(home), "--json").stdout)


def _ports(info: dict) -> list[int]:
    return [int(info[key].rsplit(":", 1)[1]) for key in ("gateway", "api", "registry", "thirdparty", "storage")]


def test_up_prints_where_the_factory_answers_and_every_listener_answers(tmp_path):
    running = start_factory(tmp_path / "home", "--factory", "acme")
    try:
        info = running.info
        assert info["factory"] == "acme" and info["home"] == str(tmp_path / "home")
        assert info["ca"] == str(running.home.ca_cert) and info["registration_token"]
        assert all(port_open(port) for port in _ports(info))
        assert requests.get(f"{info['api']}/ota/devices/", verify=info["ca"], timeout=10).status_code == 200
        # Both registries answer over TLS with the public CA's certificates and ask for a token.
        for registry in (info["registry"], info["thirdparty"]):
            challenge = requests.get(f"https://{registry}/v2/", verify=info["public_ca"], timeout=10)
            assert challenge.status_code == 401 and "/token" in challenge.headers["WWW-Authenticate"]
    finally:
        stop_factory(running)


def test_up_twice_is_idempotent_and_prints_the_same_json(tmp_path):
    first = start_factory(tmp_path / "home")
    try:
        pids = {name: s["pid"] for name, s in _status(first.home.root)["services"].items()}
        second = start_factory(tmp_path / "home")
        assert second.info == first.info
        assert {name: s["pid"] for name, s in _status(first.home.root)["services"].items()} == pids
    finally:
        stop_factory(first)


def test_status_says_what_runs(tmp_path):
    home = tmp_path / "home"
    assert _status(home)["configured"] is False
    running = start_factory(home)
    try:
        report = _status(home)
        assert report["up"] is True
        assert {key: report[key] for key in running.info} == running.info  # up's JSON, for scripts
        assert all(report["services"][name]["running"] for name in SERVICES)
        text = factory_cli("status", "--home", str(home)).stdout
        assert "factory-server: running" in text and "registry: running" in text
    finally:
        stop_factory(running)


def test_down_stops_everything_and_a_later_up_reuses_ports_and_secrets(tmp_path):
    running = start_factory(tmp_path / "home")
    assert "stopped: factory-server, registry" in factory_cli("down", "--home", str(tmp_path / "home")).stdout
    report = _status(tmp_path / "home")
    assert report["up"] is False and not any(s["running"] for s in report["services"].values())
    assert not any(port_open(port) for port in _ports(running.info))
    assert "nothing was running" in factory_cli("down", "--home", str(tmp_path / "home")).stdout
    again = start_factory(tmp_path / "home")
    try:
        assert again.info == running.info
    finally:
        stop_factory(again)


def test_up_refuses_to_rename_an_existing_factory(tmp_path):
    running = start_factory(tmp_path / "home")
    try:
        result = factory_cli("up", "--home", str(tmp_path / "home"), "--factory", "other", check=False)
        assert result.returncode == 2 and "is the factory 'factory'" in result.stderr
    finally:
        stop_factory(running)


def test_commands_on_a_folder_without_a_factory_say_so(tmp_path):
    result = factory_cli("resign", "--home", str(tmp_path / "nothing"), check=False)
    assert result.returncode == 3 and "run `fioup-flow-factory up" in result.stderr


def test_up_restarts_a_service_that_was_killed_and_keeps_the_same_factory(tmp_path):
    running = start_factory(tmp_path / "home")
    try:
        server_pid = _status(running.home.root)["services"]["factory-server"]["pid"]
        os.kill(server_pid, signal.SIGKILL)
        _wait_gone(server_pid)
        report = _status(running.home.root)
        assert report["services"]["factory-server"]["running"] is False
        assert report["services"]["registry"]["running"] is True
        again = start_factory(tmp_path / "home")
        assert again.info == running.info
        assert _status(running.home.root)["services"]["factory-server"]["pid"] != server_pid
        assert requests.get(f"{again.api}/ota/devices/", verify=again.info["ca"], timeout=10).status_code == 200
    finally:
        stop_factory(running)


def test_a_pid_file_naming_another_process_counts_as_stopped(tmp_path):
    """After a reboot, the pid in a pid file may belong to some unrelated process."""
    home = FactoryHome(tmp_path)
    home.pid_file("registry").parent.mkdir(parents=True)
    home.pid_file("registry").write_text(f"{os.getpid()} 1\n")  # alive, but started at another time
    assert not process_running(home, "registry")
    assert stop_process(home, "registry") is False  # and nothing was signalled: this test goes on


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
