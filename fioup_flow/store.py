"""The content-addressed blob store: `blobs/sha256/<hex>`, with resumable partial downloads.

A blob is only ever visible under its digest once its size and sha256 were verified, its data
synced and the rename synced: nothing partial can be taken for complete, even after a power
cut. A download in progress lives in `ingest/<hex>/data`; it is synced every `SYNC_EVERY`
bytes, so a power cut costs at most that much re-download, and it resumes from its length.
A partial file can only be trusted as far as it was synced, and a torn write could leave bad
bytes, so resumed data is verified like the rest: if a resumed download does not match its
digest, the store throws the partial away and the caller downloads it once more from zero.
A partial lives as long as an update in progress needs it: `discard_partials` drops the others
(a cancelled update's, an abandoned one's) so that a device that lives for years does not
collect them.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator

from fioup_flow.durable import fsync_dir, make_dirs
from fioup_flow.errors import FetchError, NoSpaceError

CHUNK = 64 * 1024
SYNC_EVERY = 8 * 1024 * 1024

ProgressFn = Callable[[int], None]
HEX_NAME = re.compile(r"[0-9a-f]{64}")


class DigestMismatchError(FetchError):
    """The bytes received do not hash to the digest they were asked for."""


class PartialCorruptError(Exception):
    """A resumed partial download did not verify; the partial was removed, start over from zero."""


def digest_hex(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    if algorithm != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
        raise FetchError(f"unsupported or malformed digest {digest!r}")
    return hexpart


def hash_file(path: Path) -> tuple[int, "hashlib._Hash"]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
            size += len(chunk)
    return size, h


class BlobStore:
    """Blobs by digest under `root` (fioup's `pacman.reset_apps_root`)."""

    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.ingest_root = root / "ingest"

    def path(self, digest: str) -> Path:
        return self.blobs / digest_hex(digest)

    def _ingest_dir(self, digest: str) -> Path:
        return self.ingest_root / digest_hex(digest)

    def partial_size(self, digest: str) -> int:
        """How many bytes of `digest` a previous download left behind (0 if none)."""
        try:
            return (self._ingest_dir(digest) / "data").stat().st_size
        except FileNotFoundError:
            return 0

    def has(self, digest: str, size: int | None = None) -> bool:
        """Quick presence check: the blob is committed (and has `size` bytes, if given)."""
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def verify(self, digest: str, size: int | None = None) -> bool:
        """Full check: the committed blob re-hashes to its digest."""
        path = self.path(digest)
        if not path.exists():
            return False
        actual_size, h = hash_file(path)
        return h.hexdigest() == digest_hex(digest) and (size is None or actual_size == size)

    def read(self, digest: str, max_size: int = 1 << 20) -> bytes:
        """A small committed blob (a manifest, an index), re-verified as it is read."""
        data = self.path(digest).read_bytes()
        if len(data) > max_size or hashlib.sha256(data).hexdigest() != digest_hex(digest):
            raise DigestMismatchError(f"blob {digest} in the store does not verify; fetch it again")
        return data

    def open(self, digest: str):
        return open(self.path(digest), "rb")

    def put_bytes(self, digest: str, data: bytes) -> None:
        """Commit a small blob that is already in memory (verified like any other)."""
        self.ingest(digest, len(data), lambda offset: iter([data[offset:]]))

    def ingest(self, digest: str, size: int, open_at: Callable[[int], Iterable[bytes]],
               progress: ProgressFn | None = None) -> None:
        """Download `digest` through `open_at(offset)` (bytes from offset on), verify, commit.

        Raises PartialCorruptError if a resumed download fails to verify (partial removed: call
        again), DigestMismatchError if a download from zero fails to verify, NoSpaceError when
        the disk is full (the partial is kept, so the download resumes once space is freed).
        """
        if self.has(digest, size):
            return
        expected = digest_hex(digest)
        folder = self._ingest_dir(digest)
        make_dirs(folder)
        data_path = folder / "data"
        offset, h = hash_file(data_path) if data_path.exists() else (0, hashlib.sha256())
        if offset > size:
            self.discard_partial(digest)
            raise PartialCorruptError(f"partial download of {digest} is longer than the blob")
        try:
            # A partial as long as the blob was fully downloaded but not committed (a crash in
            # between): it only needs verifying, and asking the server for more would be a 416.
            written = offset if offset == size else self._append(data_path, offset, size, open_at, h, progress)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise NoSpaceError(f"the disk holding {self.root} is full while fetching {digest} (the "
                                   f"{self.partial_size(digest)} bytes fetched are kept): free some space, then "
                                   f"run `fioup-flow resume`") from exc
            raise
        if written != size or h.hexdigest() != expected:
            self.discard_partial(digest)
            reason = f"got {written} bytes hashing to sha256:{h.hexdigest()[:12]}…, expected {size} bytes"
            if offset:
                raise PartialCorruptError(f"resumed download of {digest} did not verify ({reason})")
            raise DigestMismatchError(f"blob {digest} does not match its digest ({reason})")
        self._commit(data_path, digest)

    def _append(self, data_path: Path, offset: int, size: int, open_at: Callable[[int], Iterable[bytes]],
                h: "hashlib._Hash", progress: ProgressFn | None) -> int:
        """Append the bytes from `offset` on, syncing every SYNC_EVERY bytes; returns the final length."""
        written, unsynced = offset, 0
        with open(data_path, "ab") as f:
            if offset == 0:
                fsync_dir(data_path.parent)  # the partial's name survives a power cut
            try:
                for chunk in _bounded(open_at(offset), size - offset + 1):
                    f.write(chunk)
                    h.update(chunk)
                    written += len(chunk)
                    unsynced += len(chunk)
                    if unsynced >= SYNC_EVERY:
                        f.flush()
                        os.fdatasync(f.fileno())
                        unsynced = 0
                    if progress:
                        progress(written)
            finally:
                f.flush()
                os.fdatasync(f.fileno())
        return written

    def _commit(self, data_path: Path, digest: str) -> None:
        """Rename the verified partial to its digest, its data and mode synced first, whoever wrote
        them: a partial found whole at the start (a crash before its last sync) may be unsynced."""
        final = self.path(digest)
        make_dirs(final.parent)
        os.chmod(data_path, 0o444)
        with open(data_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(data_path, final)
        fsync_dir(final.parent)
        shutil.rmtree(data_path.parent, ignore_errors=True)

    def discard_partial(self, digest: str) -> None:
        shutil.rmtree(self._ingest_dir(digest), ignore_errors=True)

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)
        self.discard_partial(digest)

    def digests(self) -> Iterator[str]:
        """Every committed blob."""
        return _digests_in(self.blobs)

    def partials(self) -> Iterator[str]:
        """Every blob with a partial download, of the update in progress or of one abandoned."""
        return _digests_in(self.ingest_root)

    def discard_partials(self, keep: Collection[str] = ()) -> None:
        """Drop every partial download but those of `keep` (the blobs an update in progress still
        fetches), durably: a partial nothing will resume is only taking room."""
        dropped = set(self.partials()) - set(keep)
        for digest in dropped:
            self.discard_partial(digest)
        if dropped:
            fsync_dir(self.ingest_root)

    def sync(self) -> None:
        """Make removals durable (after a prune)."""
        if self.blobs.is_dir():
            fsync_dir(self.blobs)


def _digests_in(folder: Path) -> Iterator[str]:
    """The digests named by the entries of `folder` (a blob, a partial download's folder)."""
    if folder.is_dir():
        for entry in folder.iterdir():
            if HEX_NAME.fullmatch(entry.name):
                yield f"sha256:{entry.name}"


def _bounded(chunks: Iterable[bytes], limit: int) -> Iterator[bytes]:
    """Pass chunks on, stopping once more than `limit` bytes came (a server sending too much)."""
    seen = 0
    for chunk in chunks:
        if not chunk:
            continue
        seen += len(chunk)
        yield chunk
        if seen >= limit:
            return
