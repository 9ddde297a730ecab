"""One refresh of the device's TUF metadata, fetched from the gateway and kept only once verified.

The order and the choices are python-tuf's `ngclient.Updater` (`refresh`): the trusted root,
then each next root the gateway has (`/repo/{N}.root.json` until it answers 404), the timestamp
held then the gateway's, the snapshot held if it is still the one the timestamp names else the
gateway's, and the same for targets; `TrustedSet` decides what is trusted at each step. What
differs is where the first root comes from (the store, or else the chain the OS image ships,
see `roots`) and the explicit fast-forward recovery: when the new root changed the timestamp
or snapshot keys, the timestamp and snapshot held are forgotten (TUF spec 5.3.11); and an
expired timestamp (the gateway's may be the very one held, frozen) stops the refresh before a
snapshot is fetched, rather than after.

Only verified bytes are written, each durably (fsync before rename, `durable.write_atomic`), as
served: `<dir>/root.json` (the newest trusted root), `timestamp.json`, `snapshot.json`,
`targets.json`. A refresh that fails leaves what was trusted before in place.

The files come through `fetch`, from the gateway or from an offline bundle's folder (`tuf.local`),
which is what aktualizr-lite's RepoSource interface separates (`AkHttpsRepoSource`,
`LocalRepoSource`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from tuf.api.exceptions import DownloadError, EqualVersionNumberError, RepositoryError
from tuf.api.metadata import Root, Targets

from fioup_flow.durable import fsync_dir, write_atomic
from fioup_flow.tuf.trusted_set import TrustedSet, online_keys_rotated

log = logging.getLogger(__name__)

# name, largest length accepted -> the bytes, or None when the source has no such file (a 404)
Fetch = Callable[[str, int], "bytes | None"]

ROOT, TIMESTAMP, SNAPSHOT, TARGETS = "root.json", "timestamp.json", "snapshot.json", "targets.json"
# python-tuf's UpdaterConfig defaults: the most a role may weigh when nothing names its length,
# and the most root rotations one refresh follows.
MAX_LENGTH = {ROOT: 512_000, TIMESTAMP: 16_384, SNAPSHOT: 2_000_000, TARGETS: 5_000_000}
MAX_ROOT_ROTATIONS = 256


class MetadataMissingError(DownloadError):
    """The source has no timestamp, snapshot or targets at all (an offline bundle without them)."""


class Updater:
    """Refreshes the metadata in `metadata_dir` from `fetch`, starting from `shipped_roots()`
    (the OS image's chain) when the store holds no root yet; `origin` names the source in errors."""

    def __init__(self, metadata_dir: Path, fetch: Fetch, shipped_roots: Callable[[], list[bytes]],
                 origin: str = "the gateway"):
        self.metadata_dir = metadata_dir
        self.fetch = fetch
        self.shipped_roots = shipped_roots
        self.origin = origin

    def refresh(self) -> Targets:
        """Verify the newest metadata; returns the trusted targets. Raises RepositoryError (or
        DownloadError, or OSError when the store cannot be written) and keeps what it had."""
        trusted = self._load_root()
        self._load_timestamp(trusted)
        trusted.check_final_timestamp()  # the very timestamp held may have expired: fetch nothing more
        if not self._load_local(trusted.update_snapshot, SNAPSHOT, trusted=True):
            self._download(trusted.update_snapshot, SNAPSHOT, trusted.timestamp.snapshot_meta.length)
        if not self._load_local(trusted.update_targets, TARGETS):
            named = trusted.snapshot.meta.get(TARGETS)
            self._download(trusted.update_targets, TARGETS, named.length if named else None)
        return trusted.targets

    def newest_root(self) -> Root:
        """The newest root the source's chain leads to from the one trusted here, each verified by
        the one before, and nothing kept: what an offline bundle's own signatures are checked
        against before any of its metadata is (aktualizr-lite `checkAndGetRootMeta`)."""
        return self._load_root(keep=False).root

    def _load_root(self, keep: bool = True) -> TrustedSet:
        stored = self._read(ROOT)
        chain = [stored] if stored is not None else self.shipped_roots()
        trusted = TrustedSet(chain[0])
        for data in chain[1:]:
            self._next_root(trusted, data, keep)
        if stored is None and keep:
            self._persist(ROOT, chain[-1])
        for _ in range(MAX_ROOT_ROTATIONS):
            data = self.fetch(f"{trusted.root.version + 1}.{ROOT}", MAX_LENGTH[ROOT])
            if data is None:
                break
            self._next_root(trusted, data, keep)
            if keep:
                self._persist(ROOT, data)
        return trusted

    def _next_root(self, trusted: TrustedSet, data: bytes, keep: bool) -> None:
        """Trust the next root; if it changed the timestamp or snapshot keys, forget the timestamp
        and snapshot held before the new root is kept (so a crash between the two cannot skip it)."""
        before = trusted.root
        trusted.update_root(data)
        if keep and online_keys_rotated(before, trusted.root):
            log.info("root v%d changed the timestamp or snapshot keys: forgetting the timestamp and snapshot held",
                     trusted.root.version)
            self._forget(TIMESTAMP, SNAPSHOT)

    def _load_timestamp(self, trusted: TrustedSet) -> None:
        self._load_local(trusted.update_timestamp, TIMESTAMP)
        data = self._fetch_required(TIMESTAMP, MAX_LENGTH[TIMESTAMP])
        try:
            trusted.update_timestamp(data)
        except EqualVersionNumberError:
            return  # the very timestamp we hold
        self._persist(TIMESTAMP, data)

    def _load_local(self, update: Callable[..., object], name: str, **kwargs: bool) -> bool:
        """Load the copy held of `name`; False if there is none or it is not final (then the
        gateway's is needed; an intermediate one stays loaded to guard against rollback)."""
        data = self._read(name)
        if data is None:
            return False
        try:
            update(data, **kwargs)
        except RepositoryError as exc:
            log.debug("%s held is not final: %s", name, exc)
            return False
        return True

    def _download(self, update: Callable[[bytes], object], name: str, length: int | None) -> None:
        data = self._fetch_required(name, length or MAX_LENGTH[name])
        update(data)
        self._persist(name, data)

    def _fetch_required(self, name: str, max_length: int) -> bytes:
        data = self.fetch(name, max_length)
        if data is None:
            raise MetadataMissingError(f"{self.origin} has no {name}")
        return data

    def _read(self, name: str) -> bytes | None:
        try:
            return (self.metadata_dir / name).read_bytes()
        except FileNotFoundError:
            return None

    def _persist(self, name: str, data: bytes) -> None:
        write_atomic(self.metadata_dir / name, data)

    def _forget(self, *names: str) -> None:
        for name in names:
            (self.metadata_dir / name).unlink(missing_ok=True)
        if self.metadata_dir.is_dir():
            fsync_dir(self.metadata_dir)
