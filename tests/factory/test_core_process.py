"""Background services: pid files, logs, stopping stubborn processes, failing fast on start."""

from __future__ import annotations

import time

import pytest

from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.pki import ensure_pki
from fioup_flow.factory.process import (
    ServiceStartError,
    process_running,
    start_process,
    stop_process,
    wait_for_url,
)


@pytest.fixture()
def home(tmp_path) -> FactoryHome:
    return FactoryHome(tmp_path)


def test_a_started_service_runs_detached_with_its_output_in_its_log_and_starts_once(home):
    pid = start_process(home, "svc", ["sh", "-c", "echo hello from svc; exec sleep 60"])
    try:
        assert process_running(home, "svc")
        assert start_process(home, "svc", ["false"]) == pid  # already running: left alone
        deadline = time.monotonic() + 5
        while "hello from svc" not in home.log_file("svc").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "hello from svc" in home.log_file("svc").read_text()
    finally:
        assert stop_process(home, "svc") is True
    assert not process_running(home, "svc") and not home.pid_file("svc").exists()


def test_a_service_that_ignores_sigterm_is_killed(home):
    start_process(home, "stubborn", ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"])
    time.sleep(0.2)  # let the shell install its trap
    started = time.monotonic()
    assert stop_process(home, "stubborn", timeout=0.5) is True
    assert not process_running(home, "stubborn") and time.monotonic() - started < 5


def test_waiting_for_a_service_that_died_fails_at_once_with_its_log(home):
    ensure_pki(home)
    start_process(home, "broken", ["sh", "-c", "echo cannot bind >&2; exit 1"])
    started = time.monotonic()
    with pytest.raises(ServiceStartError, match="cannot bind"):
        wait_for_url("https://127.0.0.1:9/", 30, home.ca_cert, home, "broken")
    assert time.monotonic() - started < 10
