"""The blob store never shows a blob it has not verified, and resumes where a download stopped."""

import hashlib
import os
import threading
from pathlib import Path

import pytest

from fioup_flow.store import BlobStore, DigestMismatchError, PartialCorruptError
from fioup_flow.task import TaskContext
from tasks import space

DATA = os.urandom(300_000)
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


def source(data: bytes, calls: list[int] | None = None):
    def open_at(offset: int):
        if calls is not None:
            calls.append(offset)
        for i in range(offset, len(data), 10_000):
            yield data[i:i + 10_000]
    return open_at


def test_a_verified_blob_is_committed_read_only_under_its_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    store.ingest(DIGEST, len(DATA), source(DATA))
    path = store.path(DIGEST)
    assert path.read_bytes() == DATA and path.stat().st_mode & 0o222 == 0
    assert store.has(DIGEST, len(DATA)) and store.verify(DIGEST)
    assert store.partial_size(DIGEST) == 0 and list(store.digests()) == [DIGEST]


def test_a_download_cut_off_resumes_from_the_bytes_already_there(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)

    def dies_halfway(offset: int):
        yield DATA[:150_000]
        raise ConnectionError("link dropped")

    with pytest.raises(ConnectionError):
        store.ingest(DIGEST, len(DATA), dies_halfway)
    assert store.partial_size(DIGEST) == 150_000 and not store.has(DIGEST)
    calls: list[int] = []
    store.ingest(DIGEST, len(DATA), source(DATA, calls))
    assert calls == [150_000] and store.verify(DIGEST)


def test_bytes_that_do_not_match_the_digest_are_thrown_away(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(DigestMismatchError, match="does not match its digest"):
        store.ingest(DIGEST, len(DATA), source(b"x" * len(DATA)))
    assert not store.has(DIGEST) and store.partial_size(DIGEST) == 0


def test_a_corrupt_partial_is_discarded_so_the_next_attempt_starts_from_zero(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    partial = tmp_path / "ingest" / DIGEST.split(":")[1] / "data"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * 1000)  # what a torn write could leave
    with pytest.raises(PartialCorruptError):
        store.ingest(DIGEST, len(DATA), source(DATA))
    calls: list[int] = []
    store.ingest(DIGEST, len(DATA), source(DATA, calls))
    assert calls == [0] and store.verify(DIGEST)


def test_a_server_sending_too_much_is_a_mismatch_not_a_bigger_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(DigestMismatchError):
        store.ingest(DIGEST, len(DATA), source(DATA + b"extra" * 10_000))
    assert not store.has(DIGEST)


def test_a_download_complete_but_not_committed_is_committed_without_asking_again(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    partial = tmp_path / "ingest" / DIGEST.split(":")[1] / "data"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(DATA)  # a crash after the last byte, before the rename
    calls: list[int] = []
    store.ingest(DIGEST, len(DATA), source(DATA, calls))
    assert calls == [] and store.verify(DIGEST)


def half_fetched(store: BlobStore, data: bytes) -> str:
    """A download of `data` cut off halfway; returns its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def dies_halfway(offset: int):
        yield data[:len(data) // 2]
        raise ConnectionError("link dropped")

    with pytest.raises(ConnectionError):
        store.ingest(digest, len(data), dies_halfway)
    return digest


def test_partials_not_kept_are_dropped_and_committed_blobs_and_kept_partials_stay(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    committed = os.urandom(1000)
    store.put_bytes("sha256:" + hashlib.sha256(committed).hexdigest(), committed)
    ours, abandoned = half_fetched(store, DATA), half_fetched(store, os.urandom(5000))
    assert set(store.partials()) == {ours, abandoned}
    store.discard_partials(keep={ours})
    assert list(store.partials()) == [ours] and store.partial_size(ours) == len(DATA) // 2
    assert len(list(store.digests())) == 1
    store.discard_partials()
    assert not list(store.partials())


def test_an_update_starting_drops_the_partials_of_blobs_it_does_not_fetch_and_keeps_its_own(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    ours, abandoned = half_fetched(store, DATA), half_fetched(store, os.urandom(5000))
    node = space.node("target-1", [(ours, len(DATA), "layer", None)])
    space.SpaceCheck(store, 95).run(node, TaskContext(node, threading.Event()))
    assert list(store.partials()) == [ours] and store.partial_size(ours) == len(DATA) // 2
