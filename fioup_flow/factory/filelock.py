"""A blocking exclusive flock, for state the server and the CLI change from separate processes.

The factory-server (threads) and CLI commands such as `resign` both rewrite the TUF repository
and device records; flock on a fresh descriptor serialises threads and processes alike, and the
kernel drops it if the holder dies.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
