"""One fioup-flow runner per device: a non-blocking flock on `flow_dir/fioup-flow.lock`.

flock is released by the kernel when the holder dies (kill -9, power cut), so a stale lock
cannot outlive its process; the pid written into the file only serves the error message.
Whether a runner holds it is read from the kernel's table of locks (`held`), never by trying
the lock: a look that held it for an instant would make a runner starting then exit 4.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from fioup_flow.errors import LockedError

LOCK_NAME = "fioup-flow.lock"


class InstanceLock:
    """Context manager holding the exclusive lock on `path`; LockedError if another process holds it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise LockedError(f"another fioup-flow is running: {who} holds the lock {self.path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def held(path: Path) -> bool:
    """Whether a live process holds the lock at `path`, from /proc/locks (the lock left alone)."""
    try:
        info = os.stat(path)
        with open("/proc/locks") as table:
            locks = table.read()
    except FileNotFoundError:
        return False
    mark = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino} "
    return any(line.split()[1] == "FLOCK" and mark in line for line in locks.splitlines() if line.strip())
