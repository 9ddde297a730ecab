"""A line-per-command UNIX socket: how scripts drive the fault harness (cut, set, stats).

From a shell: `python tests/faults/control.py SOCKET cut` (powercutfs) or
`python tests/faults/control.py SOCKET set reset_after=100000` (netproxy); prints the answer.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path


def serve_lines(path: Path, answer: Callable[[str], str], running: Callable[[], bool] = lambda: True) -> None:
    """Answer each line sent to the socket at `path` with one line, until `running()` is false.

    The socket is bound under a temporary name and renamed into place once it listens, so a
    caller that waits for `path` to exist can connect at once.
    """
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pending = path.with_name(f".{path.name}.{os.getpid()}")
    pending.unlink(missing_ok=True)
    server.bind(str(pending))
    server.listen()
    server.settimeout(0.2)
    os.replace(pending, path)
    try:
        while running():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            with conn, conn.makefile("rw") as stream:
                for line in stream:
                    stream.write(answer(line.strip()) + "\n")
                    stream.flush()
    finally:
        server.close()
        path.unlink(missing_ok=True)


def ask(path: Path, command: str, timeout: float = 30) -> str:
    """Send one command line to the socket at `path`; return the answer line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(path))
        with conn.makefile("rw") as stream:
            stream.write(command + "\n")
            stream.flush()
            return stream.readline().strip()


def main() -> None:
    """`python tests/faults/control.py SOCKET COMMAND...`: send one line, print the answer."""
    if len(sys.argv) < 3:
        sys.exit("usage: control.py SOCKET COMMAND...")
    print(ask(Path(sys.argv[1]), " ".join(sys.argv[2:])))


if __name__ == "__main__":
    main()
