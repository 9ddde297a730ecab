"""A loopback TCP proxy that breaks the link on command: resets, stalls, a slow line, 5xx bursts.

The updater talks to the gateway and the registry through it (point the device's server URL at
the proxy's port). Faults are switched while transfers run, from Python (`FaultProxy.set`,
`stall_for`) or from a script through a UNIX control socket (`python tests/faults/netproxy.py
TARGET_PORT --control SOCK`, then lines such as `set reset_after=100000`, `stall 5`, `clear`,
`stats`).

What each fault does (per connection unless said otherwise):
- `reset_after=N`: once N bytes went downstream (server -> client), the connection is reset
  (RST to both sides): a download cut mid-blob.
- `reset_probability=p`: each chunk forwarded, in either direction, resets the connection with
  probability p (seeded, so a run can be repeated).
- `stall_after=N, stall_seconds=S`: after N bytes downstream the connection holds S seconds,
  once. `stall_for(S)` holds every connection (and new accepts) for S seconds from now.
- `rate=B`: bytes per second, shared by all connections, in each direction: a slow link.
- `http_errors=K, http_status=503`: the next K HTTP requests are answered by the proxy with
  that status and `Connection: close`, without reaching the server. A request is recognised by
  a chunk from the client that starts with an HTTP/1.x request line: plain HTTP only.
- `close_on_accept=K`: the next K connections are closed right after accept, before a byte.

`stats.bytes_down` counts what the link carried to the client: a reset discards what the proxy's
socket still held unsent (often megabytes when the client reads slowly, as a rate-limited
updater does), and those bytes are taken off again.

Through TLS (the gateway's mutual TLS) the proxy sees only ciphertext: resets, stalls, rate
and `close_on_accept` apply (the last is how a TLS upstream "fails"); `http_errors` never
matches and does nothing.

Everything is bounded: the proxy stops itself after `lifetime` seconds, a connection idle for
`idle_timeout` seconds is closed, stalls end by themselves. It listens on 127.0.0.1 only and
forwards only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import re
import select
import socket
import struct
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Self

try:
    from faults.control import serve_lines
except ImportError:  # run as a script: its own folder is on sys.path, not tests/
    from control import serve_lines

LOOPBACK = "127.0.0.1"
CHUNK = 64 * 1024
REQUEST_LINE = re.compile(rb"^[A-Z]+ \S+ HTTP/1\.[01]\r\n")


@dataclass
class Faults:
    """The fault knobs; all off by default. See the module docstring for each."""

    reset_after: int | None = None
    reset_probability: float = 0.0
    stall_after: int | None = None
    stall_seconds: float = 0.0
    rate: int | None = None
    http_errors: int = 0
    http_status: int = 503
    close_on_accept: int = 0


@dataclass
class Stats:
    """What went through: bytes each way and what the faults did."""

    bytes_up: int = 0  # client -> server
    bytes_down: int = 0  # server -> client (acknowledged by the client when a reset cut it short)
    connections: int = 0
    resets: int = 0
    http_errors_sent: int = 0
    closed_on_accept: int = 0
    stalls: int = 0  # connections held by `stall_after`
    rate_waits: int = 0  # slices the rate limit held back


@dataclass
class _Downstream:
    """How far one connection's server -> client stream got, for the per-connection faults."""

    sent: int = 0
    stalled: bool = False


_TCPI_NOTSENT_BYTES = 144  # offset of tcpi_notsent_bytes in Linux's struct tcp_info (since 4.6)


def _unsent(sock: socket.socket) -> int:
    """Bytes `sock` accepted but has not sent yet (tcp_info's notsent_bytes): a reset drops them
    before they cross the link. Bytes sent and not yet acknowledged did cross it, so they count."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        return struct.unpack_from("I", info, _TCPI_NOTSENT_BYTES)[0] if len(info) >= _TCPI_NOTSENT_BYTES + 4 else 0
    except OSError:
        return 0


class _Reset(Exception):
    """The connection is to be reset now."""


class _RateLimit:
    """A token bucket shared by all connections for one direction."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, size: int, rate: int | None, until: float) -> bool:
        """Wait until `size` bytes may pass at `rate` bytes/s (never past `until`); True if it waited."""
        if not rate:
            return False
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now)
            self._next = start + size / rate
        time.sleep(max(0.0, min(start, until) - now))
        return min(start, until) > now


class FaultProxy:
    """127.0.0.1:<port> -> 127.0.0.1:<target_port>, with switchable faults.

    Use as a context manager; `port` is chosen by the system unless given.
    """

    def __init__(self, target_port: int, port: int = 0, *, lifetime: float = 300.0,
                 idle_timeout: float = 30.0, seed: int = 0) -> None:
        self.target = (LOOPBACK, target_port)
        self.lifetime = lifetime
        self.idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._faults = Faults()
        self._stats = Stats()
        self._random = random.Random(seed)
        self._stalled_until = 0.0
        self._limits = {"up": _RateLimit(), "down": _RateLimit()}
        self._stop = threading.Event()
        self._server = socket.create_server((LOOPBACK, port))
        self._server.settimeout(0.2)
        self.port: int = self._server.getsockname()[1]
        self._deadline = 0.0
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    # --- control ---------------------------------------------------------------------------

    def set(self, **knobs: object) -> None:
        """Change the named fault knobs (the others stay); applies to running transfers too."""
        names = {field.name for field in fields(Faults)}
        unknown = set(knobs) - names
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        with self._lock:
            for name, value in knobs.items():
                setattr(self._faults, name, value)

    def clear(self) -> None:
        """No faults from now on (a stall in progress ends too)."""
        with self._lock:
            self._faults = Faults()
            self._stalled_until = 0.0

    def stall_for(self, seconds: float) -> None:
        """Hold every connection, and new ones, for `seconds` from now."""
        with self._lock:
            self._stalled_until = time.monotonic() + seconds

    @property
    def faults(self) -> Faults:
        with self._lock:
            return Faults(**asdict(self._faults))

    @property
    def stats(self) -> Stats:
        with self._lock:
            return Stats(**asdict(self._stats))

    # --- life ------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._deadline = time.monotonic() + self.lifetime
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        """Stop accepting, close every connection, wait for the threads."""
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._server.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads = [alive for alive in self._threads if alive.is_alive()] + [thread]
        thread.start()

    @property
    def running(self) -> bool:
        """Until `stop()` or the end of its lifetime."""
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def _accept_loop(self) -> None:
        while self.running:
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            self._wait_stall()
            with self._lock:
                self._stats.connections += 1
                refuse = self._faults.close_on_accept > 0
                if refuse:
                    self._faults.close_on_accept -= 1
                    self._stats.closed_on_accept += 1
            if refuse:
                client.close()
            else:
                self._spawn(self._serve, client)
        self._server.close()  # past its lifetime: refuse new connections instead of hanging them

    # --- one connection --------------------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=self.idle_timeout)
        except OSError:
            client.close()
            return
        client.settimeout(self.idle_timeout)  # a client that stops reading cannot hold us
        try:
            self._pump(client, upstream, _Downstream())
        except _Reset:
            unsent = _unsent(client)  # dropped by the reset: these never reached the client
            with self._lock:
                self._stats.resets += 1
                self._stats.bytes_down -= unsent
            for sock in (client, upstream):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def _pump(self, client: socket.socket, upstream: socket.socket, down: _Downstream) -> None:
        """Forward both ways until either side closes, applying the faults to every chunk."""
        idle_since = time.monotonic()
        while self.running:
            readable, _, _ = select.select([client, upstream], [], [], 0.2)
            if not readable:
                if time.monotonic() - idle_since > self.idle_timeout:
                    return
                continue
            idle_since = time.monotonic()
            for source in readable:
                if source is client:
                    data = client.recv(CHUNK)
                    if not data:
                        return
                    if self._answer_error(client, data):
                        return
                    self._forward(data, upstream, "up")
                else:
                    data = upstream.recv(CHUNK)
                    if not data:
                        return
                    self._forward_down(data, client, down)

    def _answer_error(self, client: socket.socket, data: bytes) -> bool:
        """Answer this request with a 5xx if a burst is armed; True if it was."""
        if not REQUEST_LINE.match(data):
            return False
        with self._lock:
            if self._faults.http_errors <= 0:
                return False
            self._faults.http_errors -= 1
            self._stats.http_errors_sent += 1
            status = self._faults.http_status
        body = b"injected by netproxy\n"
        client.sendall(b"HTTP/1.1 %d Injected Fault\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                       b"Connection: close\r\n\r\n%s" % (status, len(body), body))
        return True

    def _forward_down(self, data: bytes, client: socket.socket, down: _Downstream) -> None:
        faults = self.faults
        if faults.reset_after is not None and down.sent + len(data) >= faults.reset_after:
            self._forward(data[: max(0, faults.reset_after - down.sent)], client, "down")
            raise _Reset
        if faults.stall_after is not None and not down.stalled and down.sent + len(data) >= faults.stall_after:
            head = max(0, faults.stall_after - down.sent)
            self._forward(data[:head], client, "down")
            down.sent += head
            down.stalled = True
            with self._lock:
                self._stats.stalls += 1
            self._sleep_until(time.monotonic() + faults.stall_seconds)
            data = data[head:]
        self._forward(data, client, "down")
        down.sent += len(data)

    def _forward(self, data: bytes, to: socket.socket, direction: str) -> None:
        """Send `data` on, in rate-sized slices, after any global stall; may reset instead."""
        faults = self.faults
        if faults.reset_probability:
            with self._lock:
                if self._random.random() < faults.reset_probability:
                    raise _Reset
        step = max(1, faults.rate // 10) if faults.rate else len(data) or 1
        for offset in range(0, len(data), step):
            piece = data[offset: offset + step]
            self._wait_stall()
            if self._limits[direction].take(len(piece), self.faults.rate, self._deadline):
                with self._lock:
                    self._stats.rate_waits += 1
            # Counted before the send: the client may read the piece before this thread runs on,
            # and a reader of `stats` must never see bytes delivered but not yet counted.
            self._count(direction, len(piece))
            try:
                to.sendall(piece)
            except OSError:
                self._count(direction, -len(piece))
                raise

    def _count(self, direction: str, size: int) -> None:
        with self._lock:
            if direction == "up":
                self._stats.bytes_up += size
            else:
                self._stats.bytes_down += size

    def _wait_stall(self) -> None:
        """Hold while a `stall_for` lasts (re-read each step: it may be extended or cleared)."""
        while self.running:
            with self._lock:
                left = self._stalled_until - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.05, left))

    def _sleep_until(self, until: float) -> None:
        """Sleep until `until`, or until the proxy stops."""
        while self.running and time.monotonic() < until:
            time.sleep(min(0.05, max(0.0, until - time.monotonic())))


# --- a control socket for scripts ---------------------------------------------------------------


def _command(proxy: FaultProxy, line: str) -> str:
    """Run one control line; the answer is one line of JSON: the stats, or an error."""
    verb, _, rest = line.partition(" ")
    try:
        if verb == "set":
            proxy.set(**{name: json.loads(value)  # numbers, floats, null
                         for name, _, value in (pair.partition("=") for pair in rest.split())})
        elif verb == "clear":
            proxy.clear()
        elif verb == "stall":
            proxy.stall_for(float(rest))
        elif verb != "stats":
            raise ValueError(f"unknown command {verb!r}")
    except ValueError as error:  # json.JSONDecodeError is one too
        return json.dumps({"error": str(error)})
    return json.dumps(asdict(proxy.stats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target_port", type=int, help="the server's port on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any)")
    parser.add_argument("--control", type=Path, help="UNIX socket for control lines")
    parser.add_argument("--lifetime", type=float, default=3600.0, help="stop after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with FaultProxy(args.target_port, args.port, lifetime=args.lifetime, seed=args.seed) as proxy:
        print(proxy.port, flush=True)  # the caller learns the port from the first line
        if args.control:
            serve_lines(args.control, functools.partial(_command, proxy), lambda: proxy.running)
        else:
            while proxy.running:
                time.sleep(0.2)


if __name__ == "__main__":
    main()
