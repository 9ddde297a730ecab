"""A hostile registry cannot make the device buffer more than a manifest's or a token's cap.

The real docker-registry cannot be made to serve an oversized or endless manifest, so a fake
stands in for a hostile one here: a small HTTPS server with the factory's PKI that answers
with bodies far past the caps, or announces 1 GiB. Each test counts the bytes the client's
session handed on to be buffered.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fioup_flow.errors import FetchError
from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.pki import ensure_pki
from fioup_flow.factory.server import tls_context
from fioup_flow.reference import PinnedRef
from fioup_flow.registry import MAX_MANIFEST_SIZE, READ_CHUNK, TOKEN_MAX, HubCredentials, RegistryClient

CHUNK = 64 * 1024
FLOOD = 32 * 1024 * 1024  # how much the fake sends at most before it gives up: "endless" for a manifest
GIB = 1024 * 1024 * 1024
GOOD_MANIFEST = json.dumps({"schemaVersion": 2, "layers": []}).encode()


@dataclass
class Behaviour:
    """What the fake answers: per path prefix, (status, headers, body size or bytes)."""

    manifest: tuple[int, dict[str, str], int | bytes] = (200, {}, GOOD_MANIFEST)
    token: tuple[int, dict[str, str], int | bytes] = (200, {}, b'{"token": "t"}')
    sent: list[int] = field(default_factory=list)


class HostileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # close-delimited bodies: no length needed for an endless one
    server: "HostileRegistry"

    def do_GET(self) -> None:
        status, headers, body = self.server.behaviour.token if self.path.startswith("/token") \
            else self.server.behaviour.manifest
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value.replace("{port}", str(self.server.server_address[1])))
        if isinstance(body, bytes):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.server.behaviour.sent.append(self._send(body))

    def _send(self, body: int | bytes) -> int:
        """Write the body (or `body` bytes of filler); returns how much went out before the client hung up."""
        if isinstance(body, bytes):
            self.wfile.write(body)
            return len(body)
        sent = 0
        try:
            while sent < body:
                self.wfile.write(b"{" * CHUNK)
                sent += CHUNK
        except OSError:
            pass  # the client closed the connection: what a bounded reader does
        return sent

    def log_message(self, *args) -> None:
        pass


class HostileRegistry(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, home: FactoryHome):
        super().__init__(("127.0.0.1", 0), HostileHandler)
        self.socket = tls_context(home, "registry", False).wrap_socket(self.socket, server_side=True)
        self.behaviour = Behaviour()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> FactoryHome:
    home = FactoryHome(tmp_path_factory.mktemp("pki"))
    ensure_pki(home)
    return home


@pytest.fixture
def registry(pki) -> Iterator[HostileRegistry]:
    server = HostileRegistry(pki)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(pki) -> tuple[RegistryClient, list[int]]:
    """A device's registry client (trusting the public CA that signs the fake, as a system store would), and
    the size of every chunk its session handed on to a reader."""
    client = RegistryClient(pki.public_ca_cert, lambda: HubCredentials("hub.example", "device", "secret"), retry_seconds=1)
    handed = []

    def count(response, *args, **kwargs):
        iter_content = response.iter_content

        def counted(*a, **k):
            for chunk in iter_content(*a, **k):
                handed.append(len(chunk))
                yield chunk

        response.iter_content = counted
        return response

    client.session.hooks["response"].append(count)
    return client, handed


def ref(registry: HostileRegistry, data: bytes = GOOD_MANIFEST) -> PinnedRef:
    return PinnedRef.parse(f"127.0.0.1:{registry.server_address[1]}/factory/app@sha256:"
                           + hashlib.sha256(data).hexdigest())


def sent_by_the_fake(registry: HostileRegistry) -> int:
    """How much the fake wrote before the client hung up (once its handler has noticed)."""
    deadline = time.monotonic() + 10
    while not registry.behaviour.sent and time.monotonic() < deadline:
        time.sleep(0.05)
    return registry.behaviour.sent[0]


def test_hostile_registry_fake_serves_a_manifest_under_the_cap(registry, client) -> None:
    registry_client, _ = client
    assert registry_client.manifest(ref(registry))[0] == GOOD_MANIFEST


def test_hostile_registry_fake_endless_manifest_is_refused_after_the_cap_and_one_chunk(registry, client) -> None:
    registry_client, handed = client
    registry.behaviour.manifest = (200, {}, FLOOD)
    with pytest.raises(FetchError, match=f"larger than {MAX_MANIFEST_SIZE} bytes"):
        registry_client.manifest(ref(registry))
    sent = sent_by_the_fake(registry)
    print(f"\nendless manifest: {sum(handed)} bytes read; the fake wrote {sent} before the hang-up")
    assert sum(handed) <= MAX_MANIFEST_SIZE + READ_CHUNK
    assert sent < FLOOD, "the device hung up long before the flood ended"


def test_hostile_registry_fake_manifest_announced_at_1_gib_is_refused_before_its_body(registry, client) -> None:
    registry_client, handed = client
    registry.behaviour.manifest = (200, {"Content-Length": str(GIB)}, FLOOD)
    with pytest.raises(FetchError, match=f"larger than {MAX_MANIFEST_SIZE} bytes \\({GIB} announced\\)"):
        registry_client.manifest(ref(registry))
    assert sum(handed) == 0


def test_hostile_registry_fake_app_manifest_is_held_to_its_own_smaller_cap(registry, client) -> None:
    registry_client, handed = client
    registry.behaviour.manifest = (200, {}, FLOOD)
    with pytest.raises(FetchError, match="larger than 51200 bytes"):
        registry_client.manifest(ref(registry), 50 * 1024)
    assert sum(handed) <= 50 * 1024 + READ_CHUNK


def test_hostile_registry_fake_endless_token_answer_is_refused_after_the_cap_and_one_chunk(registry, client) -> None:
    registry_client, handed = client
    challenge = 'Bearer realm="https://127.0.0.1:{port}/token",service="fake",scope="repository:factory/app:pull"'
    registry.behaviour.manifest = (401, {"WWW-Authenticate": challenge}, b"")
    registry.behaviour.token = (200, {}, FLOOD)
    with pytest.raises(FetchError, match=f"token answer is larger than {TOKEN_MAX} bytes"):
        registry_client.manifest(ref(registry))
    assert sum(handed) <= TOKEN_MAX + READ_CHUNK


def test_hostile_registry_fake_error_answer_body_is_never_read(registry, client) -> None:
    registry_client, handed = client
    registry.behaviour.manifest = (404, {}, FLOOD)
    with pytest.raises(FetchError, match="answered 404"):
        registry_client.manifest(ref(registry))
    assert sum(handed) == 0
