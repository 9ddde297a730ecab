"""fioup-flow's own durable writes keep what they promise through a power cut (regressions)."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta, timezone

import pytest

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root

from faults.needs import FUSE
from fioup_flow.durable import open_cache, write_atomic
from fioup_flow.targets import DurableUpdater
from fioup_flow.store import CHUNK, SYNC_EVERY, BlobStore, PartialCorruptError

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


def a_signed_root() -> bytes:
    signer = CryptoSigner.generate_ed25519()
    root = Root(expires=datetime.now(timezone.utc) + timedelta(days=30))
    for role in ("root", "timestamp", "snapshot", "targets"):
        root.add_key(signer.public_key, role)
    metadata = Metadata(root)
    metadata.sign(signer)
    return metadata.to_bytes()


@pytest.mark.parametrize("disk", ["reorder"], indirect=True)
def test_the_trusted_tuf_root_survives_a_cut_while_the_tuf_client_rewrites_it(disk) -> None:
    """Every TUF refresh starts by rewriting the trusted root (root_history/N.root.json, and the
    root.json link to it); a disk that keeps that rename without its data, or the link's removal
    without the new link, would leave the device with no trusted root: no update ever again."""
    tuf = disk.mount / "sota" / "tuf"
    write_atomic(tuf / "root.json", a_signed_root())
    for seed in range(40):
        DurableUpdater(metadata_dir=str(tuf), metadata_base_url="http://127.0.0.1:9/", bootstrap=None)  # refresh()'s start
        disk.cut(seed)
        assert Root.type == Metadata.from_bytes((tuf / "root.json").read_bytes()).signed.type, f"seed {seed}"
