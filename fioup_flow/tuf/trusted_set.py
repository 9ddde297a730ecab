"""The rules of the TUF client workflow for this flavour: python-tuf's `TrustedMetadataSet`, step by step.

Mirrors `tuf/ngclient/_internal/trusted_metadata_set.py` (python-tuf 7): metadata is loaded in
order root -> timestamp -> snapshot -> targets; each step is refused if the one before it is
not final (expired, or not what it names); a new root is signed by a threshold of the old
root's keys and of its own, and is exactly one version newer; a timestamp may not go back in
version nor name an older snapshot; a snapshot matches the length and sha256 its timestamp
names, drops no file and rolls no version back; targets match the length, sha256 and version
the snapshot names; expiry is checked on the final root, timestamp, snapshot and targets only
(an expired intermediate may still guard against rollback). Signatures are checked by
python-tuf (`Root.verify_delegate`) over the bytes as served (see `flavour`).

Two deliberate departures, both for this flavour's per-tag views (after a tag change the
gateway serves a timestamp of the same version naming another snapshot):

- A timestamp of the version we hold but with other content is taken, not ignored as
  python-tuf's EqualVersionNumberError would have it; the snapshot it names may not be older.
  This is what the Foundries go-tuf fork does ("accept a timestamp with the same version but a
  different snapshot hash"), and what aktualizr does (`imagerepository.cc` verifies every
  fresh timestamp and checks the stored snapshot against it).
- So the snapshot we hold is checked against each fresh timestamp's hash, as aktualizr does:
  python-tuf skips that check for a snapshot it stored (`trusted=True`), which here would keep
  the old tag's snapshot and targets. A stored snapshot still loads as an intermediate without
  the check (it guards the new one against rollback), but is final only if it matches.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from tuf.api.exceptions import (
    BadVersionNumberError,
    EqualVersionNumberError,
    ExpiredMetadataError,
    LengthOrHashMismatchError,
    RepositoryError,
)
from tuf.api.metadata import MetaFile, Root, Snapshot, Targets, Timestamp

from fioup_flow.tuf.flavour import load, verify

log = logging.getLogger(__name__)

ONLINE_ROLES = (Timestamp.type, Snapshot.type)


class RollbackError(BadVersionNumberError):
    """Metadata older than what the device holds (aktualizr's "Rollback attempt"): refused from a
    gateway; from an offline bundle it means the bundle is older than the device, whose own
    metadata then stands (see `tuf.local`)."""


class TrustedSet:
    """The metadata trusted so far in one refresh, each piece verified before it is added."""

    def __init__(self, root_data: bytes, reference_time: datetime | None = None):
        """Trust `root_data` as it is (checked only against its own keys): it comes from the
        device's store or from the OS image, the two sources of trust."""
        self.reference_time = reference_time or datetime.now(timezone.utc)
        root = load(Root, root_data)
        verify(root.signed, Root.type, root)
        self._root: Root = root.signed
        self._timestamp: Timestamp | None = None
        self._timestamp_payload = b""
        self._snapshot: Snapshot | None = None
        self._snapshot_matches = False  # the snapshot's bytes are those the timestamp names
        self._targets: Targets | None = None

    @property
    def root(self) -> Root:
        return self._root

    @property
    def timestamp(self) -> Timestamp:
        return _required(self._timestamp, "timestamp")

    @property
    def snapshot(self) -> Snapshot:
        return _required(self._snapshot, "snapshot")

    @property
    def targets(self) -> Targets:
        return _required(self._targets, "targets")

    def update_root(self, data: bytes) -> Root:
        """The next root: signed by a threshold of the current root's keys, one version newer,
        and signed by a threshold of its own keys. May be expired (only the final root may not)."""
        if self._timestamp is not None:
            raise RuntimeError("cannot update root after timestamp")
        new = load(Root, data)
        verify(self.root, Root.type, new)
        if new.signed.version != self.root.version + 1:
            raise BadVersionNumberError(f"expected root version {self.root.version + 1}, got {new.signed.version}")
        verify(new.signed, Root.type, new)
        self._root = new.signed
        return new.signed

    def update_timestamp(self, data: bytes) -> Timestamp:
        """A timestamp signed by the root's timestamp keys, no older than the one held, naming no
        older snapshot. Raises EqualVersionNumberError for the very timestamp we hold (keep it),
        and ExpiredMetadataError after loading an expired one (it still guards against rollback)."""
        if self._snapshot is not None:
            raise RuntimeError("cannot update timestamp after snapshot")
        if self.root.is_expired(self.reference_time):
            raise ExpiredMetadataError("the final root.json is expired")
        new = load(Timestamp, data)
        verify(self.root, Timestamp.type, new)
        if self._timestamp is not None:
            held = self._timestamp
            if new.signed.version < held.version:
                raise RollbackError(f"timestamp version {new.signed.version} is older than {held.version}")
            if new.signed.version == held.version:
                if new.payload == self._timestamp_payload:
                    raise EqualVersionNumberError
                log.info("timestamp v%d names another snapshot (a view of other tags): taken", held.version)
            if new.signed.snapshot_meta.version < held.snapshot_meta.version:
                raise RollbackError(f"timestamp names snapshot version {new.signed.snapshot_meta.version}, "
                                    f"older than {held.snapshot_meta.version}")
        self._timestamp, self._timestamp_payload = new.signed, new.payload
        self.check_final_timestamp()
        return new.signed

    def update_snapshot(self, data: bytes, trusted: bool = False) -> Snapshot:
        """A snapshot signed by the root's snapshot keys that lists every file the held one lists,
        none at an older version. Untrusted data must match the timestamp's length and sha256;
        `trusted` (the device's own copy) may load without, as an intermediate. Raises after
        loading one that is not final (expired, of another version, not what the timestamp names)."""
        if self._timestamp is None:
            raise RuntimeError("cannot update snapshot before timestamp")
        if self._targets is not None:
            raise RuntimeError("cannot update snapshot after targets")
        self.check_final_timestamp()
        named = self.timestamp.snapshot_meta
        matches = _matches(named, data)
        if not trusted and not matches:
            named.verify_length_and_hashes(data)  # raises, with what differs
        new = load(Snapshot, data)
        verify(self.root, Snapshot.type, new)
        if self._snapshot is not None:
            for name, held in self._snapshot.meta.items():
                offered = new.signed.meta.get(name)
                if offered is None:
                    raise RepositoryError(f"the new snapshot is missing {name}")
                if offered.version < held.version:
                    raise RollbackError(f"snapshot lists {name} version {offered.version}, "
                                        f"older than {held.version}")
        self._snapshot, self._snapshot_matches = new.signed, matches
        self._check_final_snapshot()
        return new.signed

    def update_targets(self, data: bytes) -> Targets:
        """Targets of the length, sha256 and version the final snapshot names, signed by the
        root's targets keys, not expired."""
        if self._snapshot is None:
            raise RuntimeError("cannot load targets before snapshot")
        self._check_final_snapshot()
        named = self.snapshot.meta.get("targets.json")
        if named is None:
            raise RepositoryError("the snapshot does not list targets.json")
        named.verify_length_and_hashes(data)
        new = load(Targets, data)
        verify(self.root, Targets.type, new)
        if new.signed.version != named.version:
            raise BadVersionNumberError(f"expected targets version {named.version}, got {new.signed.version}")
        if new.signed.is_expired(self.reference_time):
            raise ExpiredMetadataError("targets.json is expired")
        self._targets = new.signed
        return new.signed

    def check_final_timestamp(self) -> None:
        """Raise if the timestamp held is expired (then nothing after it can be loaded)."""
        if self.timestamp.is_expired(self.reference_time):
            raise ExpiredMetadataError("timestamp.json is expired")

    def _check_final_snapshot(self) -> None:
        if self.snapshot.is_expired(self.reference_time):
            raise ExpiredMetadataError("snapshot.json is expired")
        named = self.timestamp.snapshot_meta
        if self.snapshot.version != named.version:
            raise BadVersionNumberError(f"expected snapshot version {named.version}, got {self.snapshot.version}")
        if not self._snapshot_matches:
            raise LengthOrHashMismatchError("the snapshot held is not the one the timestamp names")


def online_keys_rotated(before: Root, after: Root) -> bool:
    """Whether the timestamp or snapshot keys (or threshold) changed between two roots: then the
    timestamp and snapshot held must be forgotten, or versions an attacker with the old keys
    pushed ahead would block every honest one (TUF spec 5.3.11, fast-forward attack recovery)."""
    return any(set(before.roles[r].keyids) != set(after.roles[r].keyids)
               or before.roles[r].threshold != after.roles[r].threshold for r in ONLINE_ROLES)


def _matches(named: MetaFile, data: bytes) -> bool:
    try:
        named.verify_length_and_hashes(data)
    except LengthOrHashMismatchError:
        return False
    return True


def _required(value, role: str):
    if value is None:
        raise RuntimeError(f"no trusted {role} yet")
    return value
