"""The fault proxy forwards faithfully when told nothing, and breaks the link exactly as told."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from faults import netproxy
from faults.control import ask as control_ask
from faults.netproxy import FaultProxy

pytestmark = pytest.mark.timeout(60)

BLOB = bytes(range(256)) * 4096  # 1 MiB


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.hits += 1
        body = BLOB if self.path == "/blob" else b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hits = 0

    def handle_error(self, request, client_address) -> None:
        pass  # clients reset by the proxy are the point of these tests


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    """A tiny HTTP server on 127.0.0.1: /blob is 1 MiB, anything else `ok`; counts hits."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def proxy(server) -> Iterator[FaultProxy]:
    with FaultProxy(server.server_address[1], lifetime=60) as running:
        yield running


def get(proxy: FaultProxy, path: str = "/small", **kwargs) -> requests.Response:
    kwargs.setdefault("timeout", 10)
    return requests.get(proxy.url + path, **kwargs)


def test_without_faults_it_forwards_unchanged_and_counts_bytes_each_way(proxy):
    response = get(proxy, "/blob")

    assert response.content == BLOB
    stats = proxy.stats
    assert stats.bytes_down > len(BLOB) and 0 < stats.bytes_up < 1000
    assert (stats.connections, stats.resets) == (1, 0)


def test_reset_after_n_bytes_cuts_a_download_midway_then_clear_heals_it(proxy):
    proxy.set(reset_after=100_000)

    with pytest.raises(requests.exceptions.RequestException):
        get(proxy, "/blob")
    assert proxy.stats.resets == 1
    assert 0 < proxy.stats.bytes_down <= 100_000

    proxy.clear()
    assert get(proxy, "/blob").content == BLOB


def test_bytes_a_reset_drops_from_the_proxys_send_queue_are_not_counted_as_carried(proxy):
    proxy.set(reset_after=900_000)
    response = get(proxy, "/blob", stream=True)  # a client that reads nothing yet: the bytes queue up
    time.sleep(0.5)
    with pytest.raises(requests.exceptions.RequestException):
        response.content  # noqa: B018 - reading is the point
    assert proxy.stats.resets == 1
    assert proxy.stats.bytes_down < 900_000, "bytes still queued at the reset never reached the client"


def test_a_reset_probability_of_one_resets_at_the_first_chunk(proxy):
    proxy.set(reset_probability=1.0)

    with pytest.raises(requests.exceptions.ConnectionError):
        get(proxy)
    assert proxy.stats.resets == 1 and proxy.stats.bytes_down == 0


def test_a_burst_of_http_errors_answers_the_next_requests_without_reaching_the_server(proxy, server):
    proxy.set(http_errors=2, http_status=502)
    hits = server.hits

    with requests.Session() as session:  # one keep-alive client, as the device uses
        statuses = [session.get(proxy.url + "/small", timeout=10).status_code for _ in range(3)]

    assert statuses == [502, 502, 200]
    assert server.hits == hits + 1
    assert proxy.stats.http_errors_sent == 2


def test_close_on_accept_fails_the_next_connections_as_a_tls_upstream_would(proxy):
    proxy.set(close_on_accept=1)

    with pytest.raises(requests.exceptions.ConnectionError):
        get(proxy)
    assert get(proxy).status_code == 200
    assert proxy.stats.closed_on_accept == 1


def test_stall_for_holds_every_transfer_for_that_long(proxy):
    proxy.stall_for(0.5)
    started = time.monotonic()

    assert get(proxy).status_code == 200
    assert time.monotonic() - started >= 0.45


def test_a_stall_mid_body_trips_the_clients_read_timeout(proxy):
    proxy.set(stall_after=200_000, stall_seconds=2.0)

    with pytest.raises(requests.exceptions.ConnectionError):  # requests wraps the read timeout
        _ = get(proxy, "/blob", timeout=(5, 0.3)).content
    assert proxy.stats.stalls == 1
    proxy.clear()
    assert get(proxy, "/blob").content == BLOB


def test_a_rate_limit_slows_a_download_to_that_many_bytes_per_second(proxy):
    proxy.set(rate=2_000_000)
    started = time.monotonic()

    assert get(proxy, "/blob").content == BLOB
    assert 0.4 <= time.monotonic() - started < 5
    assert proxy.stats.rate_waits > 0


def test_the_proxy_stops_by_itself_at_the_end_of_its_lifetime(server):
    with FaultProxy(server.server_address[1], lifetime=0.3) as short:
        time.sleep(0.6)
        assert not short.running
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(short.url, timeout=1)


def test_it_listens_and_forwards_on_loopback_only():
    with FaultProxy(1, lifetime=1) as proxy:
        assert proxy.target == ("127.0.0.1", 1)
        assert proxy._server.getsockname()[0] == "127.0.0.1"


def test_a_script_drives_the_proxy_through_its_control_socket(server, tmp_path: Path):
    control = tmp_path / "proxy.sock"
    process = subprocess.Popen(
        [sys.executable, netproxy.__file__, str(server.server_address[1]), "--control", str(control),
         "--lifetime", "30"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline())
        deadline = time.monotonic() + 5
        while not control.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

        def ask(line: str) -> dict:
            return json.loads(control_ask(control, line))

        ask("set http_errors=1 http_status=503")
        statuses = [requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code for _ in range(2)]
        assert statuses == [503, 200]
        assert ask("stats")["http_errors_sent"] == 1
        assert "error" in ask("set no_such_fault=1")
    finally:
        process.terminate()
        process.wait(timeout=10)
