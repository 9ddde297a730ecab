"""The blob store never shows a blob it has not verified, and resumes where a download stopped."""

import hashlib
import os
from pathlib import Path

import pytest

from fioup_flow.store import BlobStore, DigestMismatchError, PartialCorruptError

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
