"""Durable file writes: the one way fioup-flow puts a file on disk that must survive power loss.

A rename is atomic but not durable until the folder holding it is synced, and the data is not
durable until the file is synced before the rename. Writing in the other order can leave an
empty or half-written file under the final name after a power cut, which is worse than no file.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import diskcache

from fioup_flow.errors import NoSpaceError


def fsync_dir(path: Path) -> None:
    """Make the entries of folder `path` (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """`mkdir -p` whose every new folder survives a power cut (its parent is synced after it)."""
    path = Path(path)
    if path.is_dir():
        return
    make_dirs(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so that after a crash the file holds the old or the new data, whole.

    Temporary file in the same folder, write, fsync, rename over the target, fsync the folder.
    """
    make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)  # the umask must not loosen a private key's mode, nor tighten others
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


# diskcache's defaults suit a cache, not a journal: they evict entries at 1 GiB, commit with
# synchronous=NORMAL (the last commits can vanish on power loss) and write values of 32 KiB or
# more to side files without fsync. These settings make every commit durable and keep every
# value inside SQLite. diskcache stores its settings in the database, so they are passed on
# every open (an older database opened with other settings would otherwise keep those).
DURABLE_CACHE_SETTINGS = {
    "eviction_policy": "none",
    "sqlite_synchronous": 2,  # FULL
    "disk_min_file_size": 1 << 30,
    "size_limit": 1 << 62,
    "statistics": 0,
}


def open_cache(path: Path) -> diskcache.Cache:
    """A diskcache.Cache at `path` whose every committed write survives a power cut.

    SQLite syncs the database's content, not its name: the folder is synced after opening so a
    database created just now does not vanish with the power.
    """
    make_dirs(Path(path))
    with full_disk_as_no_space(Path(path)):
        cache = diskcache.Cache(str(path), **DURABLE_CACHE_SETTINGS)
    fsync_dir(Path(path))
    return cache


@contextlib.contextmanager
def full_disk_as_no_space(where: Path) -> Iterator[None]:
    """A write to the cache at `where` that SQLite refused for lack of space, as NoSpaceError (41).

    SQLite rolls such a write back, so the database is intact: the caller has lost only this
    write, and it must not be taken for damage (which would send the user to discard state).
    SQLite says SQLITE_FULL when a write does not fit, but a plain I/O error when it cannot even
    create its shared-memory file: on a disk with no block left, that is a full disk too.
    """
    try:
        yield
    except sqlite3.OperationalError as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
        if code != sqlite3.SQLITE_FULL and not (code == sqlite3.SQLITE_IOERR and _no_block_left(where)):
            raise
        raise NoSpaceError(f"the disk holding {where} is full: free some space, "
                           f"then run `fioup-flow resume`") from exc


def _no_block_left(where: Path) -> bool:
    try:
        return os.statvfs(where).f_bavail == 0
    except OSError:
        return False
