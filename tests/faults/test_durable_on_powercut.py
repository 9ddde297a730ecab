"""fioup-flow's own durable writes keep what they promise through a power cut (regressions)."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from faults.needs import FUSE
from fioup_flow.durable import make_dirs, open_cache, write_atomic
from fioup_flow.store import BlobStore
from fioup_flow.task import Interrupted, Node, TaskContext

pytestmark = [*FUSE, pytest.mark.timeout(60)]


def test_an_atomic_write_into_new_folders_survives_a_cut(disk) -> None:
    write_atomic(disk.mount / "a" / "b" / "f", b"kept")
    disk.cut()
    assert (disk.mount / "a" / "b" / "f").read_bytes() == b"kept"


def test_a_value_committed_to_a_new_durable_cache_survives_a_cut(disk) -> None:
    cache = open_cache(disk.mount / "flow" / "outbox")
    cache.set("k", "v")
    cache.close()
    disk.cut()
    assert open_cache(disk.mount / "flow" / "outbox").get("k") == "v"


def test_a_committed_blob_survives_a_cut_and_a_partial_keeps_only_what_was_synced(disk) -> None:
    data = os.urandom(3 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store = BlobStore(disk.mount / "reset-apps")
    store.ingest(digest, len(data), lambda offset: iter([data[offset:]]))
    disk.cut()
    assert BlobStore(disk.mount / "reset-apps").verify(digest)


def test_a_partial_found_complete_is_synced_before_it_is_committed(disk) -> None:
    """A crash can leave a partial whole but unsynced (after the last byte, before the sync): the
    rename must not make a name durable for data that is not."""
    data = os.urandom(1024 * 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store = BlobStore(disk.mount / "reset-apps")
    partial = store.ingest_root / digest.split(":")[1] / "data"
    make_dirs(partial.parent)
    partial.write_bytes(data)  # written, never synced
    store.ingest(digest, len(data), lambda offset: iter([data[offset:]]))
    disk.cut()
    assert BlobStore(disk.mount / "reset-apps").verify(digest)


def test_a_download_stopped_at_a_chunk_keeps_every_byte_it_wrote_through_a_cut_and_resumes_there(disk) -> None:
    data = os.urandom(3 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    stop = threading.Event()
    ctx = TaskContext(Node(f"fetch:{digest}", "fetch"), stop)
    asked: list[int] = []

    def open_at(offset: int):
        asked.append(offset)
        for i in range(offset, len(data), 64 * 1024):
            if offset == 0 and i >= 1024 * 1024:
                stop.set()  # a signal arrives mid-download
            yield data[i:i + 64 * 1024]

    with pytest.raises(Interrupted):
        BlobStore(disk.mount / "reset-apps").ingest(digest, len(data), lambda offset: ctx.checked(open_at(offset)))
    store = BlobStore(disk.mount / "reset-apps")
    written = store.partial_size(digest)
    disk.cut()
    assert store.partial_size(digest) == written > 0
    stop.clear()
    store.ingest(digest, len(data), lambda offset: ctx.checked(open_at(offset)))
    assert asked == [0, written] and store.verify(digest)
