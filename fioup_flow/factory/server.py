"""The factory-server process: the gateway (mutual TLS), api and blob storage HTTPS listeners.

Run as `python -m fioup_flow.factory.server --home DIR` (by `up`, through process.py). The
listeners live in one process, each in its own thread, one thread per connection. The TLS
handshake runs in the connection's thread, not in the accepting one, so a client that stalls
mid-handshake cannot block the listener. A gateway client without a certificate signed by the
factory CA fails the handshake; routes see the peer's CN and businessCategory in the `Call`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from fioup_flow.factory.api import ApiApp
from fioup_flow.factory.faults import Faults
from fioup_flow.factory.gateway import GatewayApp
from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.http import Call, FileSlice, HttpError, Reply
from fioup_flow.factory.storage import BlobStorageApp

log = logging.getLogger("factory-server")

CONNECTION_TIMEOUT = 30.0
MAX_BODY = 64 << 20
SEND_CHUNK = 1 << 20


class App(Protocol):
    def handle(self, call: Call) -> Reply: ...


def tls_context(home: FactoryHome, name: str, require_client_cert: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(home.server_cert(name), home.server_key(name))
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(home.ca_cert))
    return context


class TlsListener(ThreadingHTTPServer):
    """A threading HTTP server that wraps each accepted connection in TLS (handshake deferred)."""

    daemon_threads = True

    def __init__(self, name: str, port: int, context: ssl.SSLContext, app: App, faults: Faults | None):
        self.name, self.context, self.app, self.faults = name, context, app, faults
        super().__init__(("127.0.0.1", port), Handler)

    def get_request(self) -> tuple[socket.socket, tuple]:
        sock, address = self.socket.accept()
        sock.settimeout(CONNECTION_TIMEOUT)
        # The real services are Go servers, and Go sets TCP_NODELAY on every connection. Without it
        # a reply written as headers then body waits for the client's delayed ACK: 40 ms a request.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request, client_address) -> None:
        log.info("%s: connection from %s failed: %s", self.name, client_address[0], sys.exc_info()[1])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: TlsListener

    def setup(self) -> None:
        self.request.do_handshake()  # a refused client certificate raises here: logged, closed
        super().setup()

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def _serve(self) -> None:
        try:
            call = self._call()
            injected = self.server.faults.take_http_error() if self.server.faults else None
            if injected:
                raise HttpError(injected, "injected fault: the server is overloaded")
            reply = self.server.app.handle(call)
        except HttpError as exc:
            reply = exc.reply()
        except Exception:
            log.exception("%s: %s %s failed", self.server.name, self.command, self.path)
            reply = HttpError(500, "internal error").reply()
        self._send(reply)

    def _call(self) -> Call:
        body = self._body()
        url = urlsplit(self.path)
        return Call(method=self.command, path=url.path, query=parse_qs(url.query),
                    headers={k.lower(): v for k, v in self.headers.items()}, body=body,
                    peer_cn=self._peer_subject("commonName"),
                    peer_business_category=self._peer_subject("businessCategory"))

    def _body(self) -> bytes:
        try:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self._chunked_body()
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise HttpError(400, "malformed body length") from None
        if length > MAX_BODY:
            self.close_connection = True  # the unread body would be taken for the next request
            raise HttpError(413, "body too large")
        return self.rfile.read(length) if length else b""

    def _chunked_body(self) -> bytes:
        """A body sent in chunks (clients streaming JSON of unknown length do that)."""
        chunks, total = [], 0
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            total += size
            if total > MAX_BODY:
                self.close_connection = True
                raise HttpError(413, "body too large")
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk
        while self.rfile.readline().strip():  # trailers, up to the empty line
            pass
        return b"".join(chunks)

    def _peer_subject(self, attribute: str) -> str | None:
        """An attribute of the client certificate's subject (OpenSSL's long name), if any."""
        cert = self.request.getpeercert()
        for rdn in (cert or {}).get("subject", ()):
            for key, value in rdn:
                if key == attribute:
                    return value
        return None

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        if reply.content_type and reply.status != 204:
            self.send_header("Content-Type", reply.content_type)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        if reply.status != 204:
            self.send_header("Content-Length", str(reply.length))
        self.end_headers()
        if self.command == "HEAD" or reply.status == 204:
            return
        if isinstance(reply.body, FileSlice):
            self._send_file(reply.body)
        else:
            self.wfile.write(reply.body)

    def _send_file(self, part: FileSlice) -> None:
        with open(part.path, "rb") as source:
            source.seek(part.offset)
            left = part.length
            while left:
                chunk = source.read(min(SEND_CHUNK, left))
                if not chunk:
                    raise OSError(f"{part.path} ended {left} bytes early")
                self.wfile.write(chunk)
                left -= len(chunk)

    def log_message(self, format: str, *args) -> None:
        log.info("%s %s %s", self.server.name, self._peer_subject("commonName") or self.client_address[0],
                 format % args)


def listeners(home: FactoryHome) -> list[TlsListener]:
    """The gateway and the api, which the fault switches reach, and the blob storage, which they do not."""
    ports = home.load_state()["ports"]
    return [
        TlsListener("gateway", ports["gateway"], tls_context(home, "gateway", True), GatewayApp(home), Faults(home)),
        TlsListener("api", ports["api"], tls_context(home, "api", False), ApiApp(home), Faults(home)),
        TlsListener("storage", ports["storage"], tls_context(home, "storage", False), BlobStorageApp(home), None),
    ]


def serve(home: FactoryHome) -> None:
    """Serve both listeners until SIGTERM or SIGINT."""
    servers = listeners(home)
    threads = [threading.Thread(target=s.serve_forever, name=s.name, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    log.info("listening: %s", ", ".join(f"{s.name} 127.0.0.1:{s.server_address[1]}" for s in servers))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    for server in servers:
        server.shutdown()
        server.server_close()
    log.info("stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="factory-server")
    parser.add_argument("--home", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    serve(FactoryHome(args.home.resolve()))


if __name__ == "__main__":
    main()
