"""fioup-flow's own durable writes keep what they promise through a power cut (regressions)."""

from __future__ import annotations

import hashlib
import os
import threading
from datetime import datetime, timedelta, timezone

import pytest

from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import DownloadError

from faults.needs import FUSE
from fioup_flow.durable import make_dirs, open_cache, write_atomic
from fioup_flow.factory.tufrepo import key_entry, new_signer, sign_document, stamp
from fioup_flow.store import CHUNK, SYNC_EVERY, BlobStore, PartialCorruptError
from fioup_flow.task import Interrupted, Node, TaskContext
from fioup_flow.tuf.trusted_set import TrustedSet
from fioup_flow.tuf.updater import Updater

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


def test_a_committed_blob_survives_a_cut(disk) -> None:
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


PAST_SYNC = 2 * 1024 * 1024  # bytes written after the last sync when the power goes


def cut_mid_download(disk, data: bytes, seed: int | None = None):
    """A download through `open_at` that cuts the power PAST_SYNC bytes after its last sync; the
    offsets it was asked for are in `.asked`."""
    asked: list[int] = []

    def open_at(offset: int):
        asked.append(offset)
        for start in range(offset, len(data), CHUNK):
            if not asked[1:] and start >= SYNC_EVERY + PAST_SYNC:  # only the first download is cut
                disk.cut(seed)
                raise ConnectionError("the power went")
            yield data[start:start + CHUNK]

    open_at.asked = asked
    return open_at


def a_blob() -> tuple[bytes, str]:
    data = os.urandom(SYNC_EVERY + 4 * 1024 * 1024)
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_partial_download_keeps_exactly_its_synced_bytes_and_resumes_from_there(disk) -> None:
    data, digest = a_blob()
    open_at = cut_mid_download(disk, data)
    with pytest.raises(OSError):  # the process's handle died with the power
        BlobStore(disk.mount / "reset-apps").ingest(digest, len(data), open_at)

    store = BlobStore(disk.mount / "reset-apps")
    assert store.partial_size(digest) == SYNC_EVERY, "the bytes written after the last sync are gone"
    store.ingest(digest, len(data), open_at)
    assert open_at.asked == [0, SYNC_EVERY], "the resume asks only for what the disk did not keep"
    assert store.verify(digest)


@pytest.mark.parametrize("disk", ["reorder"], indirect=True)
@pytest.mark.parametrize("seed", range(6))
def test_a_partial_a_disk_kept_with_a_torn_tail_is_thrown_away_or_verified_never_committed_bad(
        disk, seed) -> None:
    """A disk may keep some unsynced bytes of a partial, and tear the last write into garbage: the
    resumed download either verifies, or fails verification and is fetched once more from zero
    (what tasks/fetch.py does on PartialCorruptError); a bad blob is never committed."""
    data, digest = a_blob()
    open_at = cut_mid_download(disk, data, seed)
    with pytest.raises(OSError):
        BlobStore(disk.mount / "reset-apps").ingest(digest, len(data), open_at)

    store = BlobStore(disk.mount / "reset-apps")
    kept = store.partial_size(digest)
    assert SYNC_EVERY <= kept <= SYNC_EVERY + PAST_SYNC, "never less than was synced, never more than was written"
    try:
        store.ingest(digest, len(data), open_at)
    except PartialCorruptError:
        assert store.partial_size(digest) == 0, "the partial that did not verify is thrown away"
        store.ingest(digest, len(data), open_at)
        assert open_at.asked[-1] == 0, "then fetched once more from zero"
    assert open_at.asked[1] == kept, "the resume asks for what the disk kept, torn or not"
    assert store.verify(digest)


def a_signed_root(signer: CryptoSigner, version: int) -> bytes:
    """Root `version` in the factory's flavour, every role held by `signer`."""
    signed = {"_type": "Root", "consistent_snapshot": False, "version": version,
              "expires": stamp(datetime.now(timezone.utc) + timedelta(days=30)),
              "keys": {signer.public_key.keyid: key_entry(signer.public_key)},
              "roles": {role: {"keyids": [signer.public_key.keyid], "threshold": 1}
                        for role in ("root", "timestamp", "snapshot", "targets")}}
    return sign_document(signed, [signer])


@pytest.mark.parametrize("disk", ["reorder"], indirect=True)
def test_the_trusted_tuf_root_survives_a_cut_while_the_tuf_client_rotates_it(disk) -> None:
    """A refresh that follows a root rotation replaces the trusted root.json; a disk that kept that
    rename without its data would leave the device with no trusted root: no update ever again."""
    tuf, signer = disk.mount / "sota" / "tuf", new_signer()
    write_atomic(tuf / "root.json", a_signed_root(signer, 1))
    for seed in range(40):
        held = TrustedSet((tuf / "root.json").read_bytes()).root.version
        served = {f"{held + 1}.root.json": a_signed_root(signer, held + 1)}  # then no timestamp: the refresh fails
        with pytest.raises(DownloadError):
            Updater(tuf, lambda name, _length: served.get(name), lambda: []).refresh()
        disk.cut(seed)
        assert TrustedSet((tuf / "root.json").read_bytes()).root.version in (held, held + 1), f"seed {seed}"
