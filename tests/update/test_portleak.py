"""A host port the engine leaked after a power cut is told apart from one a program or a container
holds, and only a leak gets the engine restarted: once, through the device's own command."""

from __future__ import annotations

import socket

import pytest
from support import SHELLHTTPD_PORT, free_port

from fioup_flow.errors import StartError
from tasks.portleak import EngineRestart, HostPort, leaked_ports, published_ports


def refused(port: int) -> str:
    """The engine's words when it refuses a start for a port it counts as taken."""
    return ("driver failed programming external connectivity on endpoint shellhttpd-web-1 (1ab52d13): "
            f"Bind for 127.0.0.1:{port} failed: port is already allocated")


def test_a_port_that_nothing_holds_is_a_leak_of_the_engine(engine) -> None:
    port = free_port()
    assert leaked_ports(engine, refused(port)) == [HostPort("127.0.0.1", port)]


def test_a_port_a_program_listens_on_is_no_leak(engine) -> None:
    with socket.socket() as program:
        program.bind(("127.0.0.1", 0))
        program.listen()
        assert leaked_ports(engine, refused(program.getsockname()[1])) == []


def test_a_port_a_container_of_the_engine_publishes_is_no_leak(device, engine) -> None:
    assert device.run("apply", "1").returncode == 0
    port = SHELLHTTPD_PORT
    assert port in published_ports(engine)
    assert leaked_ports(engine, refused(port)) == []


def test_without_a_restart_command_the_engine_is_never_restarted(engine) -> None:
    assert not EngineRestart((), engine).frees(refused(free_port()))


def test_a_leak_runs_the_restart_command_once_per_port_and_waits_for_the_engine(engine, tmp_path) -> None:
    ran = tmp_path / "ran"
    restart = EngineRestart(["sh", "-c", f"echo restarted >> {ran}"], engine)
    port = free_port()

    assert restart.frees(refused(port)), "a leak: worth starting again once the engine restarted"
    assert not restart.frees(refused(port)), "a restart that did not free the port will not the second time"
    assert not restart.frees("exec: no such file"), "an error that names no port is not a leak"
    assert ran.read_text().splitlines() == ["restarted"]


def test_a_restart_command_that_fails_fails_the_start_with_its_own_words(engine) -> None:
    restart = EngineRestart(["sh", "-c", "echo 'Unit docker.service not found.' >&2; exit 5"], engine)
    with pytest.raises(StartError, match="failed \\(5\\):\nUnit docker.service not found.") as failed:
        restart.frees(refused(free_port()))
    assert failed.value.exit_code == 70
