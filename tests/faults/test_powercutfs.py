"""The power-cut filesystem keeps exactly what was made durable, and loses the rest on a cut."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faults.needs import FUSE
from faults.powercutfs import PowercutMount
from fioup_flow.durable import fsync_dir, open_cache, write_atomic

pytestmark = [*FUSE, pytest.mark.timeout(60)]


def write(path: Path, data: bytes, *, sync: bool, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def test_a_file_written_but_never_synced_is_gone_after_a_cut(disk):
    write(disk.mount / "f", b"data", sync=False)
    fsync_dir(disk.mount)
    assert (disk.mount / "f").read_bytes() == b"data"  # the running system sees its writes

    disk.cut()

    assert (disk.mount / "f").read_bytes() == b""  # the name was synced, the data was not


def test_a_new_file_whose_folder_was_never_synced_vanishes_even_if_the_file_was(disk):
    write(disk.mount / "f", b"data", sync=True)

    disk.cut()

    assert not (disk.mount / "f").exists()


def test_a_synced_file_in_a_synced_folder_survives_a_cut(disk):
    write(disk.mount / "f", b"data", sync=True)
    fsync_dir(disk.mount)
    write(disk.mount / "f", b"later, unsynced", sync=False)

    disk.cut()

    assert (disk.mount / "f").read_bytes() == b"data"
    assert (disk.backing / "f").read_bytes() == b"data"


def test_a_rename_without_a_folder_sync_is_undone_by_a_cut(disk):
    write_atomic(disk.mount / "state", b"v1")
    write(disk.mount / "state.tmp", b"v2", sync=True)
    os.replace(disk.mount / "state.tmp", disk.mount / "state")

    disk.cut()

    assert (disk.mount / "state").read_bytes() == b"v1"
    assert sorted(os.listdir(disk.mount)) == ["state"]


def test_a_rename_followed_by_a_folder_sync_survives_a_cut(disk):
    write_atomic(disk.mount / "state", b"v1")
    write_atomic(disk.mount / "state", b"v2")

    disk.cut()

    assert (disk.mount / "state").read_bytes() == b"v2"
    assert sorted(os.listdir(disk.mount)) == ["state"]


def test_an_unlink_is_durable_only_once_its_folder_is_synced(disk):
    write_atomic(disk.mount / "a", b"a")
    write_atomic(disk.mount / "b", b"b")
    (disk.mount / "a").unlink()
    fsync_dir(disk.mount)
    (disk.mount / "b").unlink()

    disk.cut()

    assert sorted(os.listdir(disk.mount)) == ["b"]


def test_a_file_appended_and_synced_in_steps_keeps_exactly_the_synced_prefix(disk):
    part = disk.mount / "blob.part"
    write(part, b"", sync=True)
    fsync_dir(disk.mount)
    fd = os.open(part, os.O_WRONLY | os.O_APPEND)
    try:
        for chunk in (b"one-", b"two-", b"three-"):
            os.write(fd, chunk)
            os.fsync(fd)
        os.write(fd, b"lost")
    finally:
        os.close(fd)
    assert part.read_bytes() == b"one-two-three-lost"

    disk.cut()

    assert part.read_bytes() == b"one-two-three-"


def test_a_new_folder_needs_its_parent_synced_and_itself_synced_to_keep_its_files(disk):
    (disk.mount / "kept").mkdir()
    (disk.mount / "lost").mkdir()
    for folder in ("kept", "lost"):
        write_atomic(disk.mount / folder / "f", b"x")  # fsyncs the file and its folder
    fsync_dir(disk.mount)
    (disk.mount / "lost").rename(disk.mount / "renamed")

    disk.cut()

    assert (disk.mount / "kept" / "f").read_bytes() == b"x"
    assert (disk.mount / "lost" / "f").read_bytes() == b"x"
    assert not (disk.mount / "renamed").exists()


def test_a_renamed_folder_keeps_its_synced_contents_under_the_new_name(disk):
    (disk.mount / "d").mkdir()
    write_atomic(disk.mount / "d" / "f", b"x")
    fsync_dir(disk.mount)
    (disk.mount / "d").rename(disk.mount / "e")
    fsync_dir(disk.mount)

    disk.cut()

    assert sorted(os.listdir(disk.mount)) == ["e"]
    assert (disk.mount / "e" / "f").read_bytes() == b"x"


def test_symlinks_modes_and_rmtree_behave_as_on_a_disk_and_persist_when_synced(disk):
    (disk.mount / "bundle").mkdir()
    write_atomic(disk.mount / "bundle" / "run.sh", b"#!/bin/sh\n", mode=0o755)
    os.symlink("run.sh", disk.mount / "bundle" / "start")
    fsync_dir(disk.mount / "bundle")
    fsync_dir(disk.mount)
    (disk.mount / "junk" / "deep").mkdir(parents=True)
    write(disk.mount / "junk" / "deep" / "x", b"x", sync=False)
    shutil.rmtree(disk.mount / "junk")
    assert not (disk.mount / "junk").exists()

    disk.cut()

    assert os.readlink(disk.mount / "bundle" / "start") == "run.sh"
    assert (disk.mount / "bundle" / "start").read_bytes() == b"#!/bin/sh\n"
    assert (disk.mount / "bundle" / "run.sh").stat().st_mode & 0o777 == 0o755


def test_a_handle_open_across_a_cut_fails_with_an_io_error(disk):
    with open(disk.mount / "f", "wb", buffering=0) as handle:
        disk.cut()
        with pytest.raises(OSError) as lost:
            handle.write(b"x")
    assert lost.value.errno == errno.EIO


def test_the_mount_starts_from_what_the_backing_folder_holds(tmp_path):
    (tmp_path / "backing" / "d").mkdir(parents=True)
    (tmp_path / "backing" / "d" / "f").write_bytes(b"old")
    with PowercutMount(tmp_path / "backing", tmp_path / "mnt") as disk:
        assert (disk.mount / "d" / "f").read_bytes() == b"old"
        (disk.mount / "d" / "f").write_bytes(b"new")
        disk.cut()
        assert (disk.mount / "d" / "f").read_bytes() == b"old"
    assert (tmp_path / "backing" / "d" / "f").read_bytes() == b"old"


@pytest.mark.parametrize("disk", ["synced", "reorder"], indirect=True)
def test_a_sqlite_commit_with_synchronous_full_in_wal_mode_survives_a_cut(disk):
    fsync_dir(disk.mount)
    db = sqlite3.connect(disk.mount / "db.sqlite", isolation_level=None)
    assert db.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)  # shared mmap works
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (v TEXT)")
    db.execute("INSERT INTO t VALUES ('committed')")
    db.execute("BEGIN")
    db.execute("INSERT INTO t VALUES ('uncommitted')")
    fsync_dir(disk.mount)  # a new database file's name is not synced by SQLite itself

    disk.cut()
    db.close()

    again = sqlite3.connect(disk.mount / "db.sqlite")
    assert again.execute("SELECT v FROM t").fetchall() == [("committed",)]
    again.close()


def test_a_durable_diskcache_keeps_a_committed_entry_across_a_cut_and_locks_between_processes(disk):
    folder = disk.mount / "flow"
    cache = open_cache(folder)
    fsync_dir(disk.mount)
    fsync_dir(folder)  # diskcache creates the folder and cache.db without syncing their names
    cache["done"] = "node-1"
    other = subprocess.run(  # a second process writes through SQLite's fcntl locks meanwhile
        [sys.executable, "-c", ("import sys; from fioup_flow.durable import open_cache; "
                                "open_cache(sys.argv[1])['other'] = 'node-2'"), str(folder)],
        timeout=30, check=True)
    assert other.returncode == 0
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"), cache.transact():
        cache["doing"] = "node-3"
        disk.cut()  # the process is still running, but its disk lost power: the commit fails
    cache.close()

    reopened = open_cache(folder)
    assert (reopened.get("done"), reopened.get("other"), reopened.get("doing")) == ("node-1", "node-2", None)
    reopened.close()


def test_sigusr1_to_the_serving_process_cuts_the_power(disk):
    write(disk.mount / "f", b"data", sync=False)
    assert disk.process is not None
    disk.process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while disk.cuts == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert disk.cuts == 1
    assert not (disk.mount / "f").exists()


@pytest.mark.parametrize("call", ["lockf", "flock"])  # lockf takes fcntl (POSIX) locks, as SQLite does
def test_a_lock_taken_through_the_mount_excludes_another_process(disk, call):
    (disk.mount / "lock").write_bytes(b"")
    take = f"import fcntl, sys; fcntl.{call}(open(sys.argv[1], 'r+'), fcntl.LOCK_EX | fcntl.LOCK_NB)"
    with open(disk.mount / "lock", "r+") as held:
        getattr(fcntl, call)(held, fcntl.LOCK_EX)
        refused = subprocess.run([sys.executable, "-c", take, str(disk.mount / "lock")], timeout=30,
                             capture_output=True, check=False)
    assert refused.returncode != 0 and b"BlockingIOError" in refused.stderr
    allowed = subprocess.run([sys.executable, "-c", take, str(disk.mount / "lock")], timeout=30, check=False)
    assert allowed.returncode == 0


def test_a_synced_file_rewritten_in_its_middle_or_truncated_keeps_its_last_synced_bytes(disk):
    write_atomic(disk.mount / "f", b"0123456789")
    fd = os.open(disk.mount / "f", os.O_WRONLY)
    try:
        os.pwrite(fd, b"ab", 3)
        os.fsync(fd)
        os.ftruncate(fd, 6)
        os.fsync(fd)
        os.pwrite(fd, b"lost", 0)
    finally:
        os.close(fd)

    disk.cut()

    assert (disk.mount / "f").read_bytes() == b"012ab5"
    write(disk.mount / "f", b"reopened with O_TRUNC, synced", sync=True)
    write(disk.mount / "f", b"", sync=False)

    disk.cut()

    assert (disk.mount / "f").read_bytes() == b"reopened with O_TRUNC, synced"


def test_a_script_cuts_the_power_through_the_control_socket_and_hears_when_it_is_done(disk):
    write(disk.mount / "f", b"data", sync=False)

    answer = subprocess.run([sys.executable, str(Path(__file__).with_name("control.py")), str(disk.control), "cut"],
                            capture_output=True, text=True, timeout=30, check=True)

    assert answer.stdout == "ok\n"
    assert not (disk.mount / "f").exists()


def test_a_file_moved_between_folders_with_only_the_new_folder_synced_shows_under_both_names(disk):
    # stricter than ext4 (whose journal commits both folders at once): a program must cope
    # with the leftover source name anyway, as a crash before the rename leaves it too
    for folder in ("tmp", "blobs"):
        (disk.mount / folder).mkdir()
    fsync_dir(disk.mount)
    write_atomic(disk.mount / "tmp" / "blob", b"x")
    os.rename(disk.mount / "tmp" / "blob", disk.mount / "blobs" / "blob")
    fsync_dir(disk.mount / "blobs")

    disk.cut()

    assert (disk.mount / "tmp" / "blob").read_bytes() == (disk.mount / "blobs" / "blob").read_bytes() == b"x"
    (disk.mount / "tmp" / "blob").write_bytes(b"changed")  # two files now, not two names of one
    assert (disk.mount / "blobs" / "blob").read_bytes() == b"x"


def test_a_mount_whose_server_was_killed_is_cleared_by_the_next_mount(tmp_path):
    with PowercutMount(tmp_path / "backing", tmp_path / "mnt") as first:
        first.process.kill()
        first.process.wait()
        with pytest.raises(OSError):
            os.listdir(first.mount)
        with PowercutMount(tmp_path / "backing", tmp_path / "mnt") as second:
            assert os.listdir(second.mount) == []


WRITER = """
import sys
from fioup_flow.durable import open_cache
cache = open_cache(sys.argv[1])
index = len(cache)
while True:
    cache[index] = index
    print(index, flush=True)  # acknowledged only once committed
    index += 1
"""


@pytest.mark.parametrize("disk", ["synced", "reorder"], indirect=True)
def test_a_durable_diskcache_keeps_every_acknowledged_commit_through_kill_9_and_cut(disk):
    folder = disk.mount / "flow"
    open_cache(folder).close()
    fsync_dir(disk.mount)
    fsync_dir(folder)
    for seed, pause in enumerate((0.2, 0.4, 0.3, 0.25, 0.35, 0.15)):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE, text=True)
        first = writer.stdout.readline()  # running: cut mid-stream, not during start-up
        time.sleep(pause)
        writer.kill()
        acknowledged = [first, *writer.communicate(timeout=30)[0].split()]

        disk.cut(seed)  # a reorder disk may keep some of the unsynced writes too, torn or not

        cache = open_cache(folder)
        kept = len(cache)
        assert all(cache[index] == index for index in range(kept))
        cache.close()
        assert kept >= int(acknowledged[-1]) + 1
        db = sqlite3.connect(folder / "cache.db")
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.close()


@pytest.mark.parametrize("mode", ["synced", "reorder"])
def test_a_mounted_disk_cuts_in_its_mode_and_counts_the_changing_calls_per_folder(tmp_path, mode) -> None:
    with PowercutMount(tmp_path / "backing", tmp_path / "mnt", mode=mode) as disk:
        (disk.mount / "flow").mkdir()
        (disk.mount / "flow" / "f").write_bytes(b"x")
        (disk.mount / "other").write_bytes(b"y")
        os.listdir(disk.mount / "flow")
        (disk.mount / "flow" / "f").read_bytes()
        assert disk.changes("/flow") == {"create": 2, "write": 1}
        assert disk.changes("/nothing") == {}
        kept = disk.cut(3)
        assert kept.startswith("kept ") if mode == "reorder" else kept == ""
