"""The power-cut filesystem's `reorder` disk: what a cut may keep beyond what was synced.

A real disk may keep writes that were never synced: a prefix of the folder changes in journal
order (a rename without its folder's sync, the first of two renames without the second), and per
file a prefix of its unsynced writes, the next one torn. Never less than what was synced, never a
change out of journal order. These tests drive the filesystem's operations directly (no FUSE
mount: the same calls the kernel makes), then read what the backing folder holds after the cut,
over many seeds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from faults.powercutfs import PowercutFS

SEEDS = range(80)


class Disk:
    """A PowercutFS in `reorder` mode, driven call by call as the kernel would."""

    def __init__(self, root: Path) -> None:
        self.backing = root / "backing"
        self.backing.mkdir(parents=True)
        self.fs = PowercutFS(self.backing, root / "work", "reorder")

    def write(self, path: str, data: bytes, *, offset: int = 0, sync: bool = False, truncate: bool = True) -> None:
        flags = os.O_WRONLY | (os.O_TRUNC if truncate else 0)
        exists = os.path.lexists(self.fs._real(path))  # noqa: SLF001
        fh = self.fs.open(path, flags) if exists else self.fs.create(path, 0o644, flags)
        self.fs.write(path, data, offset, fh)
        if sync:
            self.fs.fsync(path, 0, fh)
        self.fs.release(path, fh)

    def sync_folder(self, path: str) -> None:
        fh = self.fs.opendir(path)
        self.fs.fsyncdir(path, 0, fh)
        self.fs.releasedir(path, fh)

    def tree(self) -> dict[str, bytes | None]:
        """What the backing folder holds: relative path -> bytes (None for a folder)."""
        found: dict[str, bytes | None] = {}
        for folder, dirs, files in os.walk(self.backing):
            rel = Path(folder).relative_to(self.backing)
            found.update({str(rel / d): None for d in dirs})
            found.update({str(rel / f): Path(folder, f).read_bytes() for f in files})
        return found


def outcomes(tmp_path: Path, story: Callable[[Disk], None], seeds=SEEDS) -> list[dict[str, bytes | None]]:
    """What the backing folder holds after `story` and a cut, once per seed, each on a fresh disk."""
    found = []
    for seed in seeds:
        disk = Disk(tmp_path / str(seed))
        story(disk)
        disk.fs.cut(seed)
        found.append(disk.tree())
    return found


def distinct(trees: list[dict]) -> list[dict]:
    return [dict(t) for t in {tuple(sorted(t.items())) for t in trees}]


def atomic_replace(disk: Disk) -> None:
    """state = v1 (durable); then v2 written to a temporary file, synced, renamed over, folder never synced."""
    disk.write("/state", b"v1", sync=True)
    disk.sync_folder("/")
    disk.write("/.state.tmp", b"v2", sync=True)
    disk.fs.rename("/.state.tmp", "/state")


def test_a_rename_without_its_folder_sync_may_or_may_not_survive_and_nothing_else_can_happen(tmp_path) -> None:
    seen = distinct(outcomes(tmp_path, atomic_replace))
    assert sorted(seen, key=str) == sorted([
        {"state": b"v1"},  # nothing of the journal kept: today's synced disk
        {"state": b"v1", ".state.tmp": b"v2"},  # the creation kept, not the rename
        {"state": b"v2"},  # both kept
    ], key=str)


def test_of_two_renames_the_first_may_survive_without_the_second_a_half_swapped_folder(tmp_path) -> None:
    def swap(disk: Disk) -> None:
        for folder in ("/project", "/staging"):
            disk.fs.mkdir(folder, 0o755)
        disk.write("/project/compose.yml", b"old", sync=True)
        disk.write("/staging/compose.yml", b"new", sync=True)
        for folder in ("/project", "/staging", "/"):
            disk.sync_folder(folder)
        disk.fs.rename("/project", "/previous")
        disk.fs.rename("/staging", "/project")

    seen = distinct(outcomes(tmp_path, swap))
    assert {"previous": None, "previous/compose.yml": b"old", "staging": None, "staging/compose.yml": b"new"} in seen, \
        "the project moved aside, the new one not moved in: no project at all"
    assert {"project": None, "project/compose.yml": b"old", "staging": None, "staging/compose.yml": b"new"} in seen
    assert {"previous": None, "previous/compose.yml": b"old", "project": None, "project/compose.yml": b"new"} in seen
    assert len(seen) == 3, "journal order: the second rename never survives without the first"


def test_a_folder_change_made_durable_by_a_sync_survives_whatever_else_the_journal_loses(tmp_path) -> None:
    def story(disk: Disk) -> None:
        disk.write("/a", b"a", sync=True)
        disk.write("/b", b"b", sync=True)
        disk.sync_folder("/")
        disk.write("/c", b"c", sync=True)
        disk.fs.unlink("/a")

    for tree in outcomes(tmp_path, story):
        assert tree["b"] == b"b"
        assert tree.get("a", b"a") == b"a" and tree.get("c", b"c") == b"c"
        assert "a" in tree or "c" in tree, "the unlink comes after the creation in the journal"


def test_a_file_grown_without_fsync_keeps_its_synced_bytes_then_a_prefix_maybe_with_a_torn_tail(tmp_path) -> None:
    synced, more = b"S" * 1000, [bytes([n]) * 700 for n in (1, 2, 3)]

    def grow(disk: Disk) -> None:
        disk.write("/partial", synced, sync=True)
        disk.sync_folder("/")
        offset = len(synced)
        for chunk in more:
            disk.write("/partial", chunk, offset=offset, truncate=False)
            disk.write("/other", b"x" * 10)  # another file's write between: no coalescing of these
            offset += len(chunk)

    everything = synced + b"".join(more)
    kinds = set()
    for tree in outcomes(tmp_path, grow):
        data = tree["partial"]
        assert data.startswith(synced) and len(data) <= len(everything)
        good = os.path.commonprefix([data, everything])
        kinds.add("synced only" if data == synced else "all" if data == everything
                  else "torn" if len(good) < len(data) else "a prefix")
        tail = data[len(good):]
        assert len(good) + len(tail) <= len(everything), "a torn tail reaches no further than the writes did"
    assert kinds == {"synced only", "all", "torn", "a prefix"}


def test_a_file_removed_with_unsynced_writes_comes_back_with_them_if_its_removal_is_lost(tmp_path) -> None:
    def story(disk: Disk) -> None:
        disk.write("/journal", b"j" * 100)
        disk.fs.unlink("/journal")

    seen = [tree.get("journal") for tree in outcomes(tmp_path, story)]
    assert None in seen and b"j" * 100 in seen
    assert all(data is None or len(data) <= 100 for data in seen)


def test_the_same_operations_and_seed_keep_the_same_things(tmp_path) -> None:
    first = outcomes(tmp_path / "a", atomic_replace, seeds=[7, 8, 9])
    again = outcomes(tmp_path / "b", atomic_replace, seeds=[7, 8, 9])
    assert first == again


def test_the_synced_disk_keeps_only_what_was_synced(tmp_path) -> None:
    backing = tmp_path / "backing"
    backing.mkdir()
    fs = PowercutFS(backing, tmp_path / "work")  # the default mode
    fh = fs.create("/f", 0o644, os.O_WRONLY)
    fs.write("/f", b"never synced", 0, fh)
    fs.release("/f", fh)
    assert fs.cut(5) == ""
    assert os.listdir(backing) == []
