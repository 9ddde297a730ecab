"""The factory's TUF repository: one signed root, and a signed view per (hardware id, tags).

A device must see only the targets for its hardware id and tags, yet verify them with TUF, so
the gateway cannot filter a single signed targets.json. Instead the master list of targets is
kept unsigned (`home.tuf_targets_db`, our database) and each view a device asks for is signed
on demand with the online keys (targets, snapshot, timestamp) and cached as files under
`home.tuf_views/<key>/`; the gateway serves those files as they are, so tests can tamper with
them. Every view carries the repository's one global version, which only grows (publish,
resign, rotate-root, a timestamp refresh), so a device whose tags change never sees a version
go backwards. Keys are Ed25519, threshold 1, as PEM files (0600) named by keyid under
`home.tuf_keys`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from fioup_flow.durable import write_atomic
from fioup_flow.errors import UsageError
from fioup_flow.factory.filelock import exclusive
from fioup_flow.factory.home import FactoryHome, FactoryHomeError

ROLES = ("root", "targets", "snapshot", "timestamp")
EXPIRY = {
    "root": timedelta(days=365),
    "targets": timedelta(days=30),
    "snapshot": timedelta(days=30),
    "timestamp": timedelta(days=1),
}
# A view whose timestamp expires sooner than this is re-signed when served.
TIMESTAMP_REFRESH_MARGIN = timedelta(hours=12)
VIEW_FILES = ("targets.json", "snapshot.json", "timestamp.json")
VIEW_META = "view.json"


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def view_key(hardware_id: str, tags: list[str] | tuple[str, ...]) -> str:
    """The folder name of a view: stable for the same hardware id and set of tags."""
    ident = json.dumps([hardware_id, sorted(set(tags))])
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


def visible(info: dict[str, Any], hardware_id: str, tags: set[str]) -> bool:
    """Whether a device with `hardware_id` and `tags` may see the target with file info `info`."""
    custom = info.get("custom", {})
    return hardware_id in custom.get("hardwareIds", []) and bool(tags & set(custom.get("tags", [])))


class TufRepository:
    """The repository under `home.tuf`; safe to use from several threads and processes."""

    def __init__(self, home: FactoryHome):
        self.home = home

    # --- setup and reading -----------------------------------------------------------
    def initialized(self) -> bool:
        return (self.home.tuf_roots / "1.root.json").exists()

    def init(self) -> None:
        """Create the keys and root version 1; a repository that exists is only checked for its keys."""
        with exclusive(self.home.tuf_lock):
            if self.initialized():
                self._check_keys()
                return
            signers = {role: self._new_signer() for role in ROLES}
            root = Root(expires=_now() + EXPIRY["root"], consistent_snapshot=False)
            for role, signer in signers.items():
                root.add_key(signer.public_key, role)
            # The database first: root 1 is what marks the repository as made.
            self._save_db({"version": 1, "targets": {}, "pinned_timestamp_expires": None})
            self._write_root(Metadata(root), [signers["root"]])

    def root_versions(self) -> list[int]:
        return sorted(int(p.name.split(".")[0]) for p in self.home.tuf_roots.glob("*.root.json"))

    def root_json(self, version: int) -> bytes | None:
        """The signed root of `version`, or None if there is none."""
        path = self.home.tuf_roots / f"{version}.root.json"
        return path.read_bytes() if path.exists() else None

    def trusted_root_json(self) -> bytes:
        """The current root, which a newly registered device starts trusting."""
        return (self.home.tuf_roots / f"{self.root_versions()[-1]}.root.json").read_bytes()

    def version(self) -> int:
        return self._load_db()["version"]

    def targets(self) -> dict[str, dict]:
        """The master list of targets (all hardware ids and tags), unsigned."""
        return self._load_db()["targets"]

    # --- changes -----------------------------------------------------------------------
    def add_targets(self, entries: dict[str, dict]) -> None:
        """Add (or replace) targets by name; every view is re-signed at its next request."""
        with exclusive(self.home.tuf_lock):
            db = self._load_db()
            db["targets"].update(entries)
            self._bump(db, pinned_timestamp_expires=None)

    def remove_targets(self, names: list[str]) -> None:
        """Delete targets by name, as FoundriesFactory does for `fioctl targets prune <target>...`
        (every name must exist, or nothing is deleted); every view is re-signed at its next request."""
        with exclusive(self.home.tuf_lock):
            db = self._load_db()
            unknown = sorted(set(names) - set(db["targets"]))
            if unknown:
                raise UsageError(f"no target {', '.join(unknown)} in the repository")
            for name in names:
                del db["targets"][name]
            self._bump(db, pinned_timestamp_expires=None)

    def resign(self, timestamp_expires: datetime | None = None) -> None:
        """Re-sign every view at a new version.

        `timestamp_expires` pins the timestamps' expiry (tests pass a past one to serve an
        expired timestamp); until the next change no on-demand refresh overrides it.
        """
        with exclusive(self.home.tuf_lock):
            db = self._load_db()
            pinned = timestamp_expires.astimezone(UTC).replace(microsecond=0) if timestamp_expires else None
            self._bump(db, pinned_timestamp_expires=pinned.isoformat() if pinned else None)
            self._resign_all_views(db)

    def rotate_root(self, rotate_keys: tuple[str, ...] = ("root",)) -> int:
        """Sign root N+1 (with new keys for `rotate_keys`) by the old and the new root keys.

        Returns the new root version. Views are re-signed with the new keys.
        """
        with exclusive(self.home.tuf_lock):
            current = Metadata[Root].from_bytes(self.trusted_root_json())
            old_root_signer = self._signer("root")
            root = current.signed
            # New keys are on disk before the root naming them: a crash between the two leaves
            # an unused key file, never a root whose keys are lost.
            new_signers = {role: self._new_signer() for role in rotate_keys}
            for role, signer in new_signers.items():
                for keyid in list(root.roles[role].keyids):
                    root.revoke_key(keyid, role)
                root.add_key(signer.public_key, role)
            root.version += 1
            root.expires = _now() + EXPIRY["root"]
            signers = [old_root_signer] + ([new_signers["root"]] if "root" in new_signers else [])
            self._write_root(current, signers)
            db = self._load_db()
            self._bump(db, pinned_timestamp_expires=db.get("pinned_timestamp_expires"))
            self._resign_all_views(db)
            return root.version

    # --- views ---------------------------------------------------------------------------
    def view_file(self, hardware_id: str, tags: list[str] | tuple[str, ...], name: str,
                  device: str | None = None) -> Path:
        """The file `name` (targets/snapshot/timestamp.json) of the view, signed if stale.

        `device` (its uuid) lets the repository notice a device switching views (its tags
        changed): the version is bumped then, because a client that holds version V of one view
        would keep it rather than accept V of another (equal versions are not an update).
        """
        if name not in VIEW_FILES:
            raise ValueError(f"not a view file: {name}")
        key = view_key(hardware_id, tags)
        folder = self.home.tuf_views / key
        with exclusive(self.home.tuf_lock):
            db = self._load_db()
            meta = self._view_meta(folder)
            if device is not None and self._switches_view(db, device, key):
                self._bump(db, pinned_timestamp_expires=db.get("pinned_timestamp_expires"))
            elif meta is not None and self._timestamp_due(db, meta):
                self._bump(db, pinned_timestamp_expires=None)
            if meta is None or meta["version"] != db["version"]:
                self._sign_view(folder, hardware_id, sorted(set(tags)), db)
        return folder / name

    def _switches_view(self, db: dict, device: str, key: str) -> bool:
        """Record the view `device` now reads; True if it read another before (the caller bumps)."""
        views = db.setdefault("device_views", {})
        previous, views[device] = views.get(device), key
        if previous is None:
            self._save_db(db)
        return previous not in (None, key)

    def _timestamp_due(self, db: dict, meta: dict) -> bool:
        if db.get("pinned_timestamp_expires"):
            return False
        return datetime.fromisoformat(meta["timestamp_expires"]) - _now() < TIMESTAMP_REFRESH_MARGIN

    def _resign_all_views(self, db: dict) -> None:
        if not self.home.tuf_views.exists():
            return
        for folder in sorted(self.home.tuf_views.iterdir()):
            meta = self._view_meta(folder)
            if meta is not None:
                self._sign_view(folder, meta["hardware_id"], meta["tags"], db)

    def _sign_view(self, folder: Path, hardware_id: str, tags: list[str], db: dict) -> None:
        version, now = db["version"], _now()
        pinned = db.get("pinned_timestamp_expires")
        timestamp_expires = datetime.fromisoformat(pinned) if pinned else now + EXPIRY["timestamp"]
        chosen = {name: TargetFile.from_dict(json.loads(json.dumps(info)), name)
                  for name, info in db["targets"].items() if visible(info, hardware_id, set(tags))}
        targets = Metadata(Targets(version=version, expires=now + EXPIRY["targets"], targets=chosen))
        snapshot = Metadata(Snapshot(version=version, expires=now + EXPIRY["snapshot"],
                                     meta={"targets.json": MetaFile(version=version)}))
        timestamp = Metadata(Timestamp(version=version, expires=timestamp_expires,
                                       snapshot_meta=MetaFile(version=version)))
        folder.mkdir(parents=True, exist_ok=True)
        for role, metadata in (("targets", targets), ("snapshot", snapshot), ("timestamp", timestamp)):
            metadata.sign(self._signer(role))
            write_atomic(folder / f"{role}.json", metadata.to_bytes(), mode=0o644)
        meta = {"hardware_id": hardware_id, "tags": tags, "version": version,
                "timestamp_expires": timestamp_expires.isoformat()}
        write_atomic(folder / VIEW_META, json.dumps(meta).encode(), mode=0o644)

    @staticmethod
    def _view_meta(folder: Path) -> dict | None:
        try:
            return json.loads((folder / VIEW_META).read_text())
        except FileNotFoundError:
            return None

    # --- storage -------------------------------------------------------------------------
    def _bump(self, db: dict, pinned_timestamp_expires: str | None) -> None:
        db["version"] += 1
        db["pinned_timestamp_expires"] = pinned_timestamp_expires
        self._save_db(db)

    def _load_db(self) -> dict:
        return json.loads(self.home.tuf_targets_db.read_text())

    def _save_db(self, db: dict) -> None:
        write_atomic(self.home.tuf_targets_db, json.dumps(db, indent=2, sort_keys=True).encode(), mode=0o644)

    def _write_root(self, root: Metadata[Root], signers: list[CryptoSigner]) -> None:
        root.signatures.clear()
        for signer in signers:
            root.sign(signer, append=True)
        write_atomic(self.home.tuf_roots / f"{root.signed.version}.root.json", root.to_bytes(), mode=0o644)

    def _key_path(self, keyid: str) -> Path:
        return self.home.tuf_keys / f"{keyid}.pem"

    def _new_signer(self) -> CryptoSigner:
        """A new Ed25519 key, saved (0600) under its keyid."""
        signer = CryptoSigner.generate_ed25519()
        write_atomic(self._key_path(signer.public_key.keyid), signer.private_bytes, mode=0o600)
        return signer

    def _check_keys(self) -> None:
        """Every key the current root names is here: a home another version of the factory made
        may keep them elsewhere, and the gateway would then answer 500 to every device."""
        root = Metadata[Root].from_bytes(self.trusted_root_json()).signed
        missing = sorted(k for r in ROLES for k in root.roles[r].keyids if not self._key_path(k).exists())
        if missing:
            raise FactoryHomeError(f"the factory home {self.home.root} has no private key for {', '.join(missing)} "
                                   "(made by another version of fioup-flow-factory?): stop it with `down`, "
                                   "remove the folder, and run `up` again")

    def _signer(self, role: str) -> CryptoSigner:
        """The signer of the key the current root names for `role`."""
        root = Metadata[Root].from_bytes(self.trusted_root_json()).signed
        keyid = root.roles[role].keyids[0]
        return CryptoSigner(load_pem_private_key(self._key_path(keyid).read_bytes(), password=None),
                            root.get_key(keyid))
