"""A FUSE filesystem that loses, on command, everything not yet made durable: a power cut.

A `kill -9` is not a power cut: the kernel keeps every write the process made. This filesystem
keeps a *volatile* layer (what the running processes see) apart from a *durable* one (the
backing folder), and moves state from the first to the second only when a program asks for it:

- `fsync`/`fdatasync` of a file makes that file's data, size and mode durable (its inode).
- `fsync` of a directory makes that directory's entries durable: creations, renames into it,
  unlinks from it, symlinks. A new name points at its inode's last synced data (empty if the
  file was never synced); a new subdirectory brings the entries *it* had synced.
- Nothing else is ever durable: no write-back on close, no journal that commits neighbours.
  This is stricter than ext4 (whose journal often commits more than asked) on purpose: a
  program that survives this filesystem does not owe its survival to the journal's timing.
- A file moved between folders with only the destination synced shows under both names after a
  cut (as two files). ext4 would show one; a program must cope with a leftover source (say a
  temporary file) anyway, since a crash just before the rename leaves it too.

`cut` drops the volatile layer, closes every open file (later use of an old handle: EIO) and
resets the mount in place to exactly the backing folder.

That is the default disk, `synced`: it keeps exactly what was synced. A real disk may keep more,
in another order; mode `reorder` (`--disk reorder`) models that at each cut, from a seed:

- Folder changes (creations, renames, unlinks, new folders, symlinks) not yet made durable by a
  sync of their folder are a journal, as ext4's: a cut keeps a prefix of it, in order, anywhere
  from none to all. So a rename whose folder was never synced may survive, and of two renames
  the first may survive without the second (a half-swapped folder). A change made durable by a
  folder sync stays durable whatever else the journal loses.
- File data not yet synced is kept per file, independently of the journal and of other files
  (data=writeback): of the writes (and truncations) since the file's last fsync, a prefix in
  order, and the first write left out may be torn: part of its bytes, then zeros or garbage up
  to some length it reached. So a file may come back grown with a torn or garbage tail, or a
  rename may survive while the data renamed did not.

Bytes kept are the file's bytes at the cut (a region written twice shows its last content).
The choices come from the seed the cut is given (`cut SEED`): the same operations and seed keep
the same things. The backing folder always holds the
durable state, so it can be inspected after a cut or after unmounting.

Not modelled: ownership (chown applies to the volatile layer only; durable files belong to
the FUSE process, root), timestamps (never durable), hard links (EPERM), device nodes and FIFOs
(ENOSYS), extended attributes (unsupported), renameat2 flags (mfusepy drops them: NOREPLACE and
EXCHANGE act as a plain rename). Nothing else may change the backing folder while mounted.
libfuse prints "Ignoring invalid max threads value" at mount: harmless.

Locks: the filesystem implements neither `lock` nor `flock`, so the kernel keeps fcntl and
flock locks locally for the mount; processes on this machine see each other's locks, which
is what SQLite needs. Shared writable mmap (SQLite's WAL index) works because the mount uses
the page cache (no direct_io); attribute and entry caches are off so a cut is seen at once.

Implementation: the volatile layer is a real folder ("scratch") that every call passes
through to; each scratch inode gets an id. The durable layer is a map of directory id ->
{name: id} plus one object file per synced file id; backing names are hard links to those
objects, so a file's fsync updates every durable name of it at once. All of it lives in a work
folder next to the backing folder (same filesystem, for the hard links).

Run: `python tests/faults/powercutfs.py BACKING MOUNT [--control SOCKET] [--disk synced|reorder]`
serves in the foreground; `kill -USR1 <pid>` or the line `cut [SEED]` on the control socket cuts
the power (the answer, `ok ...`, says what a reorder cut kept); the line `changes PREFIX` answers
how many changing calls (writes, syncs, creations, renames...) reached paths under PREFIX;
`fusermount3 -u MOUNT` ends it; `python tests/faults/control.py SOCKET cut` is the shell client
(answers `ok` once the mount shows the durable state). From Python: `PowercutMount` below.
Cut only after killing the programs under test, as a power cut would: a survivor's next call
on an old handle fails with EIO, but its in-memory state (say SQLite's cache) is not reset.
"""

from __future__ import annotations

import argparse
import errno
import functools
import itertools
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

try:
    from faults.control import ask, serve_lines
except ImportError:  # run as a script: its own folder is on sys.path, not tests/
    from control import ask, serve_lines

ROOT = 0  # the id of the mount's root directory
MODES = ("synced", "reorder")
Kind = tuple[str, int | str]  # ("file"|"dir", mode) | ("link", target)


@dataclass
class Handle:
    """An open file or directory: the scratch fd, the id of its inode when opened, O_APPEND."""

    fd: int
    ident: int
    append: bool = False


@dataclass(frozen=True)
class Change:
    """A change to folder entries, in journal order: each entry (folder id, name, child id, or
    None for a removal); `kinds` holds what each child is when it first appeared."""

    seq: int
    entries: tuple[tuple[int, str, int | None], ...]
    kinds: dict[int, Kind] = field(default_factory=dict)


def _how_many(rng: random.Random, count: int) -> int:
    """How many of `count` unsynced operations a cut keeps: none, all, or any number between,
    so that both ends (today's synced disk, a disk that kept everything) come up often."""
    draw = rng.random()
    return 0 if draw < 0.2 else count if draw < 0.4 else rng.randint(0, count)


def _copy_fd(src: int, dst_path: Path, start: int) -> None:
    """Make the (possibly hard-linked) file `dst_path` equal to fd `src`, whose bytes before
    `start` it already holds.

    Written in place, not renamed over, so every hard link of the object sees the new data.
    """
    src = os.open(f"/proc/self/fd/{src}", os.O_RDONLY)  # the handle may be write-only
    size = os.fstat(src).st_size
    dst = os.open(dst_path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        done = min(start, size, os.fstat(dst).st_size)
        while done < size:
            copied = os.copy_file_range(src, dst, size - done, done, done)
            if copied == 0:
                break
            done += copied
        os.ftruncate(dst, done)
    finally:
        os.close(dst)
        os.close(src)


class DurableTree:
    """The durable state: directory entries by id, synced file data as object files.

    `backing` is kept equal to the tree reachable from ROOT after every change, so a crash of
    this process (or a cut) leaves the durable state on disk in plain form.
    """

    def __init__(self, backing: Path, objects: Path) -> None:
        self.backing = backing
        self.objects = objects
        self.entries: dict[int, dict[str, int]] = {}
        # file id -> lowest offset written or truncated since its last sync: an fsync copies
        # only from there, so a download synced chunk by chunk costs linear, not quadratic, time
        self.dirty: dict[int, int] = {}
        self.kinds: dict[int, tuple[str, int | str]] = {}  # id -> ("file"|"dir", mode) | ("link", target)

    def object(self, ident: int) -> Path:
        return self.objects / str(ident)

    def changed(self, ident: int, offset: int) -> None:
        """The volatile file `ident` changed from `offset` on."""
        self.dirty[ident] = min(offset, self.dirty.get(ident, offset))

    def sync_file(self, ident: int, fd: int) -> None:
        """The file's current data and mode become its durable content."""
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        start = self.dirty.pop(ident, None)
        if start is not None or not self.object(ident).exists():
            _copy_fd(fd, self.object(ident), start or 0)
        os.chmod(self.object(ident), mode)
        self.kinds[ident] = ("file", mode)

    def sync_dir(self, ident: int, now: dict[str, tuple[int, tuple[str, int | str]]]) -> None:
        """The directory's entries become `now` (name -> (id, kind)); backing follows."""
        before = self.entries.get(ident, {})
        self.entries[ident] = {name: child for name, (child, _) in now.items()}
        for child, kind in now.values():
            if kind[0] != "file" or child not in self.kinds:  # a file's mode is durable on its fsync
                self.kinds[child] = kind
        for path in self.paths_of(ident):
            for name, child in before.items():
                if self.entries[ident].get(name) != child:
                    _remove(path / name)
            for name, child in self.entries[ident].items():
                if before.get(name) != child:
                    self._materialize(path / name, child)

    def paths_of(self, ident: int) -> list[Path]:
        """Every backing path at which the durable tree holds directory `ident`."""
        found: list[Path] = []
        stack = [(ROOT, self.backing, frozenset([ROOT]))]
        while stack:
            at, path, ancestors = stack.pop()
            if at == ident:
                found.append(path)
            for name, child in self.entries.get(at, {}).items():
                if self.kinds.get(child, ("",))[0] == "dir" and child not in ancestors:
                    stack.append((child, path / name, ancestors | {child}))
        return found

    def _materialize(self, path: Path, ident: int, ancestors: frozenset[int] = frozenset()) -> None:
        """Create backing `path` as the durable state of `ident` (a folder with its entries).

        Directories moved without syncing both parents can form a cycle of durable entries (a
        journal never would); `ancestors` cuts it so a cut still terminates.
        """
        if ident in ancestors:
            return
        kind, detail = self.kinds[ident]
        if kind == "link":
            os.symlink(detail, path)
        elif kind == "dir":
            os.mkdir(path, detail)
            os.chmod(path, detail)
            for name, child in self.entries.setdefault(ident, {}).items():
                self._materialize(path / name, child, ancestors | {ident})
        else:
            if not self.object(ident).exists():
                os.close(os.open(self.object(ident), os.O_WRONLY | os.O_CREAT, detail))
                os.chmod(self.object(ident), detail)
            os.link(self.object(ident), path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _walk(root: Path) -> Iterator[tuple[Path, str]]:
    """Every entry under `root` (relative path, name), parents before children."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for name in sorted(dirnames + filenames):
            yield rel, name


class Unsynced:
    """What reached the volatile layer and not yet the durable one, in order (mode `reorder`):
    folder changes as a journal, and per file the writes and truncations since its last fsync."""

    def __init__(self) -> None:
        self.journal: list[Change] = []
        self.synced_at: dict[int, int] = {}  # folder id -> seq of the last change its sync made durable
        self.data: dict[int, list[tuple[str, int, int]]] = {}  # file id -> ("w", offset, length) | ("t", length, 0)

    def change(self, entries: list[tuple[int, str, int | None]], kinds: dict[int, Kind] | None = None) -> None:
        self.journal.append(Change(len(self.journal) + 1, tuple(entries), kinds or {}))

    def folder_synced(self, folder: int) -> None:
        """A folder's sync makes every change of its entries so far durable."""
        self.synced_at[folder] = len(self.journal)

    def write(self, ident: int, offset: int, length: int) -> None:
        ops = self.data.setdefault(ident, [])
        if ops and ops[-1][0] == "w" and ops[-1][1] + ops[-1][2] == offset:  # an append goes on the last write
            ops[-1] = ("w", ops[-1][1], ops[-1][2] + length)
        else:
            ops.append(("w", offset, length))

    def truncate(self, ident: int, length: int) -> None:
        self.data.setdefault(ident, []).append(("t", length, 0))

    def file_synced(self, ident: int) -> None:
        self.data.pop(ident, None)

    def pending(self, change: Change) -> list[tuple[int, str, int | None]]:
        """The entries of `change` no folder sync made durable yet."""
        return [entry for entry in change.entries if change.seq > self.synced_at.get(entry[0], 0)]

    def folders_after(self, entries: dict[int, dict[str, int]], kinds: dict[int, Kind],
                      rng: random.Random) -> tuple[int, int]:
        """Apply to the durable `entries` (and `kinds`) a prefix of the unsynced folder changes;
        returns (changes kept, changes that were unsynced)."""
        pending = [change for change in self.journal if self.pending(change)]
        keep = _how_many(rng, len(pending))
        for change in pending[:keep]:
            for folder, name, child in self.pending(change):
                listing = entries.setdefault(folder, {})
                if child is None:
                    listing.pop(name, None)
                    continue
                listing[name] = child
                kinds.setdefault(child, change.kinds.get(child, ("file", 0o644)))
                if kinds[child][0] == "dir":
                    entries.setdefault(child, {})
        return keep, len(pending)

    def file_after(self, ident: int, durable: Path, volatile: Path | None, rng: random.Random) -> str:
        """Rewrite the object file `durable` (the file's synced bytes) with a prefix of its unsynced
        writes, the first one left out maybe torn, bytes taken from `volatile` (the file at the
        cut); returns "" or "torn"."""
        ops = self.data.get(ident, [])
        keep = _how_many(rng, len(ops))
        # the write left out: lost whole, or a prefix of it made it, or a prefix and then garbage
        fate = rng.choice(["lost", "prefix", "garbage"]) if keep < len(ops) and ops[keep][0] == "w" else "lost"
        fd = os.open(durable, os.O_RDWR | os.O_CREAT, 0o600)
        source = os.open(volatile, os.O_RDONLY) if volatile else None
        try:
            for kind, offset, length in ops[:keep]:
                if kind == "t":
                    os.ftruncate(fd, offset)
                else:
                    _copy_range(source, fd, offset, length)
            if fate != "lost":
                _, offset, length = ops[keep]
                whole = rng.randint(0, length - 1)  # bytes of the write that made it
                _copy_range(source, fd, offset, whole)
                if fate == "garbage":  # the file grew further all the same: zeros, or whatever the blocks held
                    tail = rng.randint(1, length - whole)
                    os.pwrite(fd, rng.randbytes(tail) if rng.random() < 0.5 else bytes(tail), offset + whole)
        finally:
            os.close(fd)
            if source is not None:
                os.close(source)
        return "torn" if fate == "garbage" else ""


def _copy_range(source: int | None, dest: int, offset: int, length: int) -> None:
    """Bytes [offset, offset+length) of `source` (zeros past its end, or without one) into `dest`."""
    data = os.pread(source, length, offset) if source is not None and length else b""
    os.pwrite(dest, data + bytes(length - len(data)), offset)


class PowercutFS:
    """The mfusepy Operations: pass-through to scratch, durability only on fsync (see module)."""

    use_ns = True

    def __init__(self, backing: Path, work: Path, mode: str = "synced") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown disk mode {mode!r}: one of {', '.join(MODES)}")
        self.backing = backing
        self.scratch = work / "scratch"
        self.ghosts = work / "ghosts"  # reorder: files removed with unsynced data, kept to the cut
        self.durable = DurableTree(backing, work / "objects")
        self.mode = mode
        self._mutex = threading.RLock()
        self.ids: dict[int, int] = {}  # scratch st_ino -> id
        self.handles: dict[int, Handle] = {}
        self.next_id = itertools.count(ROOT + 1)
        self.next_fh = itertools.count(1)
        self.cuts = 0
        self.unsynced = Unsynced()
        self.changes: Counter[tuple[str, str]] = Counter()  # (call, path) -> how many changing calls
        self._load()

    # --- power -------------------------------------------------------------------------------

    def cut(self, seed: int | None = None) -> str:
        """Lose every unsynced change (mode reorder: all but what the seed keeps, see module):
        close all handles, show exactly the backing folder. Returns what a reorder cut kept."""
        with self._mutex:
            for handle in self.handles.values():
                os.close(handle.fd)
            self.handles.clear()
            kept = self._reorder(random.Random(seed)) if self.mode == "reorder" else ""
            self._load()
            self.cuts += 1
            return kept

    def _reorder(self, rng: random.Random) -> str:
        """Make durable what the disk kept beyond its synced state: the backing folder becomes it."""
        entries = {folder: dict(listing) for folder, listing in self.durable.entries.items()}
        kinds = dict(self.durable.kinds)
        kept, unsynced = self.unsynced.folders_after(entries, kinds, rng)
        volatile = self._volatile_files()
        files = torn = 0
        for ident in sorted(self._files_in(entries, kinds)):
            if ident in self.unsynced.data:
                files += 1
                torn += bool(self.unsynced.file_after(ident, self.durable.object(ident), volatile.get(ident), rng))
                os.chmod(self.durable.object(ident), kinds[ident][1])
        for name in os.listdir(self.backing):
            _remove(self.backing / name)
        self.durable.entries, self.durable.kinds = entries, kinds
        for name, child in entries[ROOT].items():
            self.durable._materialize(self.backing / name, child)  # noqa: SLF001 - the tree's own rebuild
        return (f"kept {kept}/{unsynced} unsynced folder changes; unsynced data of {files} file(s) "
                f"kept in part, {torn} with a torn last write")

    def _files_in(self, entries: dict[int, dict[str, int]], kinds: dict[int, Kind]) -> set[int]:
        """The ids of the files reachable from the root in `entries`."""
        found, stack, seen = set(), [ROOT], {ROOT}
        while stack:
            for child in entries.get(stack.pop(), {}).values():
                if kinds.get(child, ("",))[0] == "file":
                    found.add(child)
                elif kinds.get(child, ("",))[0] == "dir" and child not in seen:
                    seen.add(child)
                    stack.append(child)
        return found

    def _volatile_files(self) -> dict[int, Path]:
        """Where each file id's bytes at the cut are: its scratch inode, or its ghost."""
        found = {ident: self.ghosts / str(ident) for ident in self.ghosted}
        for folder, _, names in os.walk(self.scratch):
            for name in names:
                path = Path(folder, name)
                ident = self.ids.get(path.lstat().st_ino)
                if ident is not None:
                    found.setdefault(ident, path)
        return found

    def _load(self) -> None:
        """Rebuild both layers from the backing folder, as a mount after a reboot does."""
        for folder in (self.scratch, self.durable.objects, self.ghosts):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        self.ids.clear()
        self.unsynced = Unsynced()
        self.ghosted: set[int] = set()
        self.durable.dirty.clear()
        self.durable.entries = {ROOT: {}}
        self.durable.kinds = {ROOT: ("dir", stat.S_IMODE(self.backing.stat().st_mode))}
        shutil.copytree(self.backing, self.scratch, symlinks=True, dirs_exist_ok=True)
        self.ids[self.scratch.stat().st_ino] = ROOT
        seen: set[int] = set()
        for rel, name in _walk(self.backing):
            ident = next(self.next_id)
            back = self.backing / rel / name
            info = back.lstat()
            if stat.S_ISLNK(info.st_mode):
                kind: Kind = ("link", os.readlink(back))
            elif stat.S_ISDIR(info.st_mode):
                kind = ("dir", stat.S_IMODE(info.st_mode))
            else:
                kind = ("file", stat.S_IMODE(info.st_mode))
                if info.st_ino in seen:  # two durable names of one inode: give each its own
                    shutil.copy2(back, back.with_name(f".{name}.split"))
                    os.replace(back.with_name(f".{name}.split"), back)
                seen.add(back.lstat().st_ino)
                os.link(back, self.durable.object(ident))
            self.durable.kinds[ident] = kind
            self.durable.entries[self._id_at(rel)][name] = ident
            if kind[0] == "dir":
                self.durable.entries[ident] = {}
            self.ids[(self.scratch / rel / name).lstat().st_ino] = ident

    def _id_at(self, rel: Path) -> int:
        return self._id((self.scratch / rel).lstat())

    # --- ids and the record of changes ---------------------------------------------------------

    def _id(self, info: os.stat_result) -> int:
        ident = self.ids.get(info.st_ino)
        if ident is None:
            ident = self.ids[info.st_ino] = next(self.next_id)
        return ident

    def _entry(self, path: str) -> tuple[int, str]:
        """(id of the folder holding `path`, its name there)."""
        parent, name = os.path.split(path)
        return self._id(os.lstat(self._real(parent))), name

    def _kind_at(self, path: str) -> tuple[int, Kind]:
        """(id, kind) of what scratch holds at `path`."""
        info = os.lstat(self._real(path))
        if stat.S_ISLNK(info.st_mode):
            return self._id(info), ("link", os.readlink(self._real(path)))
        return self._id(info), ("dir" if stat.S_ISDIR(info.st_mode) else "file", stat.S_IMODE(info.st_mode))

    def _appeared(self, path: str) -> None:
        """Journal a new name (file, folder or symlink) at `path`."""
        self._count("create", path)
        if self.mode == "reorder":
            ident, kind = self._kind_at(path)
            self.unsynced.change([(*self._entry(path), ident)], {ident: kind})

    def _count(self, call: str, path: str | None) -> None:
        self.changes[(call, path or "")] += 1

    def _keep_for_cut(self, path: str) -> None:
        """Reorder mode: a file about to lose its last name keeps its bytes until the cut, if a
        cut could still bring back unsynced writes of it."""
        if self.mode != "reorder":
            return
        info = os.lstat(self._real(path))
        ident = self.ids.get(info.st_ino)
        if ident in self.unsynced.data and stat.S_ISREG(info.st_mode) and ident not in self.ghosted:
            os.link(self._real(path), self.ghosts / str(ident))
            self.ghosted.add(ident)

    def _remove(self, path: str, remove) -> None:
        """Remove scratch `path` with `remove` (unlink or rmdir); its inode loses its id."""
        self._count(remove.__name__, path)
        self._keep_for_cut(path)
        entry = self._entry(path)
        inode = os.lstat(self._real(path)).st_ino
        remove(self._real(path))
        self.ids.pop(inode, None)
        if self.mode == "reorder":
            self.unsynced.change([(*entry, None)])

    def _real(self, path: str) -> str:
        return str(self.scratch) + path

    def _handle(self, fh: int) -> Handle:
        handle = self.handles.get(fh)
        if handle is None:
            raise OSError(errno.EIO, "handle lost in a power cut")
        return handle

    def _open(self, path: str, flags: int, mode: int = 0) -> int:
        fd = os.open(self._real(path), flags, mode)
        fh = next(self.next_fh)
        self.handles[fh] = Handle(fd, self._id(os.fstat(fd)), bool(flags & os.O_APPEND))
        if flags & os.O_TRUNC:
            self._truncated(self.handles[fh].ident, 0)
        return fh

    def _truncated(self, ident: int, length: int) -> None:
        self.durable.changed(ident, length)
        if self.mode == "reorder":
            self.unsynced.truncate(ident, length)

    # --- metadata --------------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict:
        with self._mutex:
            info = os.fstat(self._handle(fh).fd) if fh else os.lstat(self._real(path))
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks", "st_atime_ns",
                "st_mtime_ns", "st_ctime_ns")
        attrs = {key.removesuffix("_ns"): getattr(info, key) for key in keys}
        attrs["st_ino"] = info.st_ino
        if self.ids.get(info.st_ino) in self.ghosted:
            attrs["st_nlink"] -= 1  # the ghost is no name a program can see
        return attrs

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._real(path), amode):
            raise OSError(errno.EACCES, path)
        return 0

    def readlink(self, path: str) -> str:
        return os.readlink(self._real(path))

    def readdir(self, path: str, fh: int) -> list[str]:
        with self._mutex:
            return [".", "..", *os.listdir(self._real(path))]

    def statfs(self, path: str) -> dict:
        info = os.statvfs(self._real(path))
        return {key: getattr(info, key) for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree",
                                                     "f_bavail", "f_files", "f_ffree", "f_namemax")}

    def chmod(self, path: str, mode: int) -> int:
        self._count("chmod", path)
        os.chmod(self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        info = os.lstat(self._real(path))
        if (uid, gid) != (info.st_uid, info.st_gid) and (uid, gid) != (-1, -1):  # SQLite, as root, chowns
            self._count("chown", path)  # its -wal to the owner it has: no change
        os.chown(self._real(path), uid, gid, follow_symlinks=False)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        self._count("utimens", path)
        if times is None:
            os.utime(self._real(path), follow_symlinks=False)
        else:
            os.utime(self._real(path), ns=times, follow_symlinks=False)
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self._mutex:
            self._count("truncate", path)
            if fh:
                handle = self._handle(fh)
                os.ftruncate(handle.fd, length)
                self._truncated(handle.ident, length)
            else:
                os.truncate(self._real(path), length)
                self._truncated(self._id(os.lstat(self._real(path))), length)
        return 0

    # --- names -----------------------------------------------------------------------------

    def mkdir(self, path: str, mode: int) -> int:
        with self._mutex:
            os.mkdir(self._real(path), mode)
            self._appeared(path)
        return 0

    def symlink(self, target: str, source: str) -> int:
        with self._mutex:
            os.symlink(source, self._real(target))
            self._appeared(target)
        return 0

    def unlink(self, path: str) -> int:
        with self._mutex:
            self._remove(path, os.unlink)
        return 0

    def rmdir(self, path: str) -> int:
        with self._mutex:
            self._remove(path, os.rmdir)
        return 0

    def rename(self, old: str, new: str) -> int:
        with self._mutex:
            self._count("rename", old)
            self._count("rename", new)
            moved, (source, target) = self._kind_at(old), (self._entry(old), self._entry(new))
            if os.path.lexists(self._real(new)) and not os.path.samefile(self._real(old), self._real(new)):
                self._keep_for_cut(new)
                replaced = os.lstat(self._real(new)).st_ino
                os.rename(self._real(old), self._real(new))
                self.ids.pop(replaced, None)
            else:
                os.rename(self._real(old), self._real(new))
            if self.mode == "reorder":
                self.unsynced.change([(*source, None), (*target, moved[0])], {moved[0]: moved[1]})
        return 0

    def link(self, target: str, source: str) -> int:
        raise OSError(errno.EPERM, "hard links are not modelled")

    # --- data ------------------------------------------------------------------------------

    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        with self._mutex:
            new = not os.path.lexists(self._real(path))
            fh = self._open(path, flags | os.O_CREAT, mode)
            if new:
                self._appeared(path)
            return fh

    def open(self, path: str, flags: int) -> int:
        with self._mutex:
            if flags & os.O_TRUNC:
                self._count("truncate", path)
            return self._open(path, flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:  # held while reading: a cut must not close (and reuse) the fd meanwhile
            return os.pread(self._handle(fh).fd, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._mutex:
            self._count("write", path)
            handle = self._handle(fh)
            size = os.fstat(handle.fd).st_size
            # an O_APPEND handle writes at the end, whatever offset the kernel passed
            start = size if handle.append else offset
            self.durable.changed(handle.ident, min(start, size))
            written = os.pwrite(handle.fd, data, offset)
            if self.mode == "reorder":
                self.unsynced.write(handle.ident, start, written)
            return written

    def release(self, path: str, fh: int) -> int:
        with self._mutex:
            handle = self.handles.pop(fh, None)
            if handle:
                os.close(handle.fd)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            self._count("fsync", path)
            handle = self._handle(fh)
            info = os.fstat(handle.fd)
            if info.st_nlink and self.ids.get(info.st_ino) == handle.ident:
                self.durable.sync_file(handle.ident, handle.fd)
                self.unsynced.file_synced(handle.ident)
        return 0

    # --- directories -----------------------------------------------------------------------

    def opendir(self, path: str) -> int:
        with self._mutex:
            return self._open(path, os.O_RDONLY | os.O_DIRECTORY)

    def releasedir(self, path: str, fh: int) -> int:
        return self.release(path, fh)

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            self._count("fsyncdir", path)
            handle = self._handle(fh)
            if not os.fstat(handle.fd).st_nlink:  # removed: its entries have no durable home
                return 0
            now: dict[str, tuple[int, Kind]] = {}
            with os.scandir(handle.fd) as entries:
                for entry in entries:
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISLNK(info.st_mode):
                        kind: Kind = ("link", os.readlink(entry.name, dir_fd=handle.fd))
                    elif stat.S_ISDIR(info.st_mode):
                        kind = ("dir", stat.S_IMODE(info.st_mode))
                    else:
                        kind = ("file", stat.S_IMODE(info.st_mode))
                    now[entry.name] = (self._id(info), kind)
            self.durable.sync_dir(handle.ident, now)
            self.unsynced.folder_synced(handle.ident)
        return 0

    def changes_under(self, prefix: str) -> dict[str, int]:
        """How many changing calls of each kind reached paths under `prefix` (a mount path)."""
        with self._mutex:
            counts: Counter[str] = Counter()
            for (call, path), count in self.changes.items():
                if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                    counts[call] += count
            return dict(counts)


# --- serving -----------------------------------------------------------------------------------


def _command(fs: PowercutFS, line: str) -> str:
    """`cut [SEED]` cuts the power and answers `ok` (and what a reorder cut kept); `cuts` answers how
    many cuts there were; `changes PREFIX` the changing calls on paths under PREFIX, as JSON."""
    verb, _, rest = line.partition(" ")
    if verb == "cut":
        return f"ok {fs.cut(int(rest) if rest else None)}".rstrip()
    if verb == "cuts":
        return str(fs.cuts)
    if verb == "changes":
        return json.dumps(fs.changes_under(rest or "/"), sort_keys=True)
    return f"unknown command {line!r}"


def _cut_on_sigusr1(fs: PowercutFS) -> None:
    while True:
        signal.sigwait({signal.SIGUSR1})
        fs.cut()


def serve(backing: Path, mount: Path, control: Path | None = None, mode: str = "synced") -> None:
    """Mount over `mount` in the foreground until unmounted (`fusermount3 -u`)."""
    from mfusepy import (
        FUSE,  # a test dependency; importing here keeps the module importable
    )

    backing, mount = backing.resolve(), mount.resolve()
    work = Path(tempfile.mkdtemp(prefix=f".powercutfs-{backing.name}-", dir=backing.parent))
    try:
        fs = PowercutFS(backing, work, mode)
        # block SIGUSR1 before libfuse starts its threads, so only the sigwait thread takes it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        threading.Thread(target=_cut_on_sigusr1, args=(fs,), daemon=True).start()
        threading.Thread(target=serve_lines, args=(control or work / "control.sock",
                         functools.partial(_command, fs)), daemon=True).start()
        FUSE(fs, str(mount), foreground=True, hard_remove=True, attr_timeout=0, entry_timeout=0,
             negative_timeout=0, allow_other=True, fsname="powercutfs", default_permissions=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unmount(mount: Path) -> None:
    """Detach whatever FUSE mount is at `mount`, live or dead (lazily: open files may stay)."""
    subprocess.run(["fusermount3", "-u", "-z", str(mount)], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class PowercutMount:
    """A PowercutFS served by a child process: mount on enter, `cut()`, unmount on exit."""

    def __init__(self, backing: Path, mount: Path, control: Path | None = None, mode: str = "synced") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown disk mode {mode!r}: one of {', '.join(MODES)}")
        self.mode = mode
        self.backing, self.mount = Path(backing), Path(mount)
        self.control = Path(control) if control else self.mount.parent / f".{self.mount.name}.powercut.sock"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        _unmount(self.mount)  # a mount left by a killed server answers ENOTCONN to everything
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mount.mkdir(parents=True, exist_ok=True)
        self.control.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(self.backing), str(self.mount), "--control", str(self.control),
             "--disk", self.mode])
        deadline = time.monotonic() + 10
        while not (os.path.ismount(self.mount) and self.control.exists()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"powercutfs did not mount {self.mount}")
            time.sleep(0.02)
        return self

    def cut(self, seed: int | None = None) -> str:
        """Lose every unsynced change now (mode reorder: all but what `seed` keeps); returns, once
        the mount shows the durable state, what a reorder cut kept."""
        answer = ask(self.control, "cut" if seed is None else f"cut {seed}")
        if not answer.startswith("ok"):
            raise RuntimeError(f"powercutfs: {answer}")
        return answer.removeprefix("ok").strip()

    def changes(self, prefix: str) -> dict[str, int]:
        """The changing calls (writes, syncs, creations, renames...) that reached paths under
        `prefix` (a path inside the mount, e.g. "/sota/flow"), counted by kind."""
        return json.loads(ask(self.control, f"changes {prefix}"))

    @property
    def cuts(self) -> int:
        return int(ask(self.control, "cuts"))

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        _unmount(self.mount)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        self.control.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backing", type=Path, help="folder that holds the durable state")
    parser.add_argument("mount", type=Path, help="mountpoint the programs under test use")
    parser.add_argument("--control", type=Path, help="UNIX socket that takes the line `cut`")
    parser.add_argument("--disk", choices=MODES, default="synced",
                        help="synced: a cut keeps exactly what was synced; reorder: it may keep more (see above)")
    args = parser.parse_args()
    serve(args.backing, args.mount, args.control, args.disk)


if __name__ == "__main__":
    main()
