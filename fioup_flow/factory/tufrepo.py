"""The factory's TUF repositories as a FoundriesFactory serves them: CI and production, per tag.

The flavour (read back by `fioup_flow.tuf.flavour`): `_type` capitalised, no `spec_version`;
keys `{"keytype": "ED25519" | "RSA", "keyval": {"public": ...}}` (ED25519: the raw key in hex;
RSA: a PEM SubjectPublicKeyInfo) whose ids are the sha256 of the key's DER SubjectPublicKeyInfo
(fioctl `subcommands/keys/tuf_utils.go`, genTufKeyId); signatures `{"keyid", "method", "sig":
base64}` made by securesystemslib's CryptoSigner over the `signed` object's canonical bytes
(RSA: PSS over SHA-256 with a 32-byte salt, as fioctl's `tuf_crypto.go`); each file written in
that same form (sorted keys, no whitespace), so the bytes served are the bytes hashed. Target
entries are `{"custom": {...}, "hashes": {"sha256": ...}, "length": 0}`; snapshot and timestamp
`meta` carry sha256, length and version.

Two repositories: devices whose certificate says businessCategory=production read `prod`, the
others `ci` (dg-satellite `server/gateway/middleware.go`, `storage/gateway/storage.go`). Each
has its own root chain; as fioctl keeps the pair (`client/foundries_tuf_root.go`, TufRootPair)
they share the root, snapshot and timestamp keys and differ in the targets key: CI Targets are
signed online, production Targets with the production ("offline") targets key. The chains
start as a real factory's: root 1 with an RSA root key and ED25519 online keys, root 2 moving
the root key to ED25519 (signed by both), the same in both chains (aktualizr-lite imports "the
first two versions ... the same for both production and CI"); then production's root 3 names
its own targets key. Every root after the first carries `x-changelog` (fioctl's
RootChangeReason): a field clients must keep without knowing it.

Views: metadata is served per tag (dg-satellite keeps it per tag, chosen by `x-ats-tags`). The
master lists of Targets are kept unsigned (`home.tuf_targets_db`); each view (repository, tags)
is signed on demand with the online keys and cached as files under
`home.tuf_views(repo)/<key>/`, which the gateway serves as they are (so tests can tamper with
them). A view lists every Target carrying one of its tags, for every hardware id (devices keep
theirs). Every view carries the one global version, which only grows (publish, resign,
rotate-root, a timestamp refresh): after a tag change a device meets a timestamp of the version
it holds naming another snapshot, as devices of a real factory do.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey

from fioup_flow.durable import write_atomic
from fioup_flow.errors import UsageError
from fioup_flow.factory.filelock import exclusive
from fioup_flow.factory.home import FactoryHome, FactoryHomeError
from fioup_flow.tuf.flavour import KEY_TYPES, canonical_bytes, key_from_flavour, parse_expires

REPOS = ("ci", "prod")
CI, PRODUCTION = REPOS
ROLES = ("root", "targets", "snapshot", "timestamp")
ONLINE_ROLES = ("targets", "snapshot", "timestamp")  # signed anew with every view
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
RSA_BITS = 4096  # fioctl's tufKeyTypeRSA.GenerateKey


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def stamp(moment: datetime) -> str:
    """A time as the flavour writes it: `2026-01-31T12:00:00Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_id(signer_key) -> str:
    """fioctl's key id: sha256 of the public key's DER SubjectPublicKeyInfo (not the TUF spec's)."""
    return hashlib.sha256(signer_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def new_signer(keytype: str = "ED25519") -> CryptoSigner:
    """A new key of `keytype` ("ED25519" or "RSA") as a securesystemslib signer with fioctl's key id."""
    private = (rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS) if keytype == "RSA"
               else ed25519.Ed25519PrivateKey.generate())
    public = private.public_key()
    return CryptoSigner(private, SSlibKey.from_crypto(public, key_id(public), KEY_TYPES[keytype][1]))


def key_entry(key: SSlibKey) -> dict:
    """A root's `keys` entry for `key`: upper-case type, no scheme."""
    keytype = next(name for name, (sslib_type, _) in KEY_TYPES.items() if sslib_type == key.keytype)
    return {"keytype": keytype, "keyval": {"public": key.keyval["public"]}}


def signature_entry(signer: CryptoSigner, payload: bytes) -> dict:
    """A signature as the flavour writes it: key id, method, and the signature in base64."""
    return {"keyid": signer.public_key.keyid, "method": signer.public_key.scheme,
            "sig": base64.b64encode(bytes.fromhex(signer.sign(payload).signature)).decode()}


def sign_document(signed: dict, signers: list[CryptoSigner]) -> bytes:
    """The served file: `signed` with a signature of each signer over its canonical bytes."""
    payload = canonical_bytes(signed)
    return canonical_bytes({"signatures": [signature_entry(s, payload) for s in signers], "signed": signed})


def meta_entry(data: bytes, version: int) -> dict:
    """What a snapshot or timestamp says of a file it vouches for."""
    return {"hashes": {"sha256": hashlib.sha256(data).hexdigest()}, "length": len(data), "version": version}


def next_root(current: dict, role_keys: dict[str, list[SSlibKey]], expires: datetime | None,
              changelog: str | None) -> dict:
    """Root `current` + 1 with `role_keys` replacing those roles' keys (threshold: all of them);
    keys no role names any more are dropped."""
    signed = json.loads(json.dumps(current))
    for role, keys in role_keys.items():
        signed["roles"][role] = {"keyids": [k.keyid for k in keys], "threshold": len(keys)}
        signed["keys"].update({k.keyid: key_entry(k) for k in keys})
    named = {keyid for role in signed["roles"].values() for keyid in role["keyids"]}
    signed["keys"] = {keyid: key for keyid, key in signed["keys"].items() if keyid in named}
    signed["version"] += 1
    signed["expires"] = stamp(expires or _now() + EXPIRY["root"])
    if changelog:
        signed["x-changelog"] = {"polis-id": "fioup-flow-factory", "message": changelog, "timestamp": stamp(_now())}
    return signed


def view_key(tags: list[str] | tuple[str, ...]) -> str:
    """The folder name of a view: stable for the same set of tags."""
    return hashlib.sha256(json.dumps(sorted(set(tags))).encode()).hexdigest()[:20]


def visible(info: dict[str, Any], tags: set[str]) -> bool:
    """Whether the target with file info `info` belongs to a view of `tags`."""
    return bool(tags & set(info.get("custom", {}).get("tags", [])))


class TufRepository:
    """The repositories under `home.tuf`; safe to use from several threads and processes."""

    def __init__(self, home: FactoryHome):
        self.home = home

    # --- setup and reading -----------------------------------------------------------
    def initialized(self) -> bool:
        return (self.home.tuf_roots(CI) / "1.root.json").exists()

    def init(self) -> None:
        """Create the keys and the first roots; a repository that exists is only checked."""
        with exclusive(self.home.tuf_lock):
            if (self.home.tuf / "root").exists():
                raise self._other_version("keeps one root chain, not a CI and a production one")
            if self.initialized():
                self._check_keys()
                return
            # Keys are on disk before the roots naming them; the database before root 1, which
            # marks the repository as made.
            first_root, root, snapshot, timestamp, targets_ci, targets_prod = (
                self._new_signer(t) for t in ("RSA", "ED25519", "ED25519", "ED25519", "ED25519", "ED25519"))
            self._save_db({"version": 1, "targets": {}, "production_targets": {}, "pinned_expires": {}})
            base = {"_type": "Root", "consistent_snapshot": False, "keys": {}, "roles": {}, "version": 0}
            keys = {"root": [first_root], "targets": [targets_ci], "snapshot": [snapshot], "timestamp": [timestamp]}
            root1 = next_root(base, {r: [s.public_key for s in ks] for r, ks in keys.items()}, None, None)
            root2 = next_root(root1, {"root": [root.public_key]}, None, "root key taken offline (ED25519)")
            prod3 = next_root(root2, {"targets": [targets_prod.public_key]}, None, "production targets key")
            self._write_root((PRODUCTION,), prod3, [root])
            self._write_root((PRODUCTION, CI), root2, [first_root, root])
            self._write_root((PRODUCTION, CI), root1, [first_root])

    def root_versions(self, repo: str) -> list[int]:
        return sorted(int(p.name.split(".")[0]) for p in self.home.tuf_roots(repo).glob("*.root.json"))

    def root_json(self, repo: str, version: int) -> bytes | None:
        """The signed root `version` of `repo`, or None if there is none."""
        path = self.home.tuf_roots(repo) / f"{version}.root.json"
        return path.read_bytes() if path.exists() else None

    def latest_root(self, repo: str) -> dict:
        """The `signed` part of `repo`'s newest root."""
        return json.loads(self.root_json(repo, self.root_versions(repo)[-1]))["signed"]

    def export_roots(self, out: Path) -> dict[str, list[int]]:
        """Write every root as an OS image ships them: `out/ci/N.root.json`, `out/prod/N.root.json`."""
        for repo in REPOS:
            for version in self.root_versions(repo):
                write_atomic(out / repo / f"{version}.root.json", self.root_json(repo, version), mode=0o644)
        return {repo: self.root_versions(repo) for repo in REPOS}

    def version(self) -> int:
        return self._load_db()["version"]

    def targets(self, production: bool = False) -> dict[str, dict]:
        """The master list of CI (or production) targets, every hardware id and tag, unsigned."""
        return self._load_db()["production_targets" if production else "targets"]

    # --- changes -----------------------------------------------------------------------
    def add_targets(self, entries: dict[str, dict], production: bool = False) -> None:
        """Add (or replace) CI targets by name, and production ones too with `production`; every
        view is re-signed at its next request."""
        with exclusive(self.home.tuf_lock):
            db = self._load_db()
            db["targets"].update(entries)
            if production:
                db["production_targets"].update(entries)
            self._bump(db, pinned={})

    def remove_targets(self, names: list[str]) -> None:
        """Delete targets by name, as FoundriesFactory does for `fioctl targets prune <target>...`
        (every name must exist, or nothing is deleted), from production too; every view is re-signed
        at its next request."""
        with exclusive(self.home.tuf_lock):
            db = self._load_db()
            unknown = sorted(set(names) - set(db["targets"]))
            if unknown:
                raise UsageError(f"no target {', '.join(unknown)} in the repository")
            for name in names:
                del db["targets"][name]
                db["production_targets"].pop(name, None)
            self._bump(db, pinned={})

    def resign(self, expires: dict[str, datetime] | None = None) -> None:
        """Re-sign every view at a new version.

        `expires` pins the expiry of online roles (tests pass a past one to serve expired
        metadata); until the next change no on-demand refresh overrides it.
        """
        pinned = {role: stamp(moment) for role, moment in (expires or {}).items()}
        if set(pinned) - set(ONLINE_ROLES):
            raise ValueError(f"only {', '.join(ONLINE_ROLES)} expiries can be pinned")
        with exclusive(self.home.tuf_lock):
            db = self._load_db()
            self._bump(db, pinned=pinned)
            self._resign_all_views(db)

    def rotate_root(self, roles: tuple[str, ...] = ("root",), threshold: int = 1,
                    expires: datetime | None = None) -> dict[str, int]:
        """Sign the next root of both repositories, with `threshold` new keys (and that threshold)
        for each of `roles`, by the old root keys and the new ones; views are re-signed.

        The targets role gets new keys of its own per repository; the others are shared.
        `expires` sets the new roots' expiry. Returns the new root version per repository.
        """
        with exclusive(self.home.tuf_lock):
            shared = {role: [self._new_signer() for _ in range(threshold)] for role in roles if role != "targets"}
            versions = {}
            for repo in REPOS:
                keys = shared | ({"targets": [self._new_signer() for _ in range(threshold)]}
                                 if "targets" in roles else {})
                current = self.latest_root(repo)
                new = next_root(current, {r: [s.public_key for s in ks] for r, ks in keys.items()}, expires,
                                f"rotate {', '.join(roles)} keys (threshold {threshold})")
                self._write_root((repo,), new, self.signers(current, "root") + keys.get("root", []))
                versions[repo] = new["version"]
            db = self._load_db()
            self._bump(db, pinned=db["pinned_expires"])
            self._resign_all_views(db)
            return versions

    # --- views ---------------------------------------------------------------------------
    def view_file(self, repo: str, tags: list[str] | tuple[str, ...], name: str) -> Path:
        """The file `name` (targets/snapshot/timestamp.json) of `repo`'s view of `tags`, signed if stale."""
        if name not in VIEW_FILES:
            raise ValueError(f"not a view file: {name}")
        folder = self.home.tuf_views(repo) / view_key(tags)
        with exclusive(self.home.tuf_lock):
            db = self._load_db()
            meta = self._view_meta(folder)
            if meta is not None and self._timestamp_due(db, meta):
                self._bump(db, pinned={})
            if meta is None or meta["version"] != db["version"]:
                self._sign_view(repo, folder, sorted(set(tags)), db)
        return folder / name

    @staticmethod
    def _timestamp_due(db: dict, meta: dict) -> bool:
        if "timestamp" in db["pinned_expires"]:
            return False
        return parse_expires(meta["timestamp_expires"]) - _now() < TIMESTAMP_REFRESH_MARGIN

    def _resign_all_views(self, db: dict) -> None:
        for repo in REPOS:
            views = self.home.tuf_views(repo)
            for folder in sorted(views.iterdir()) if views.exists() else ():
                meta = self._view_meta(folder)
                if meta is not None:
                    self._sign_view(repo, folder, meta["tags"], db)

    def _sign_view(self, repo: str, folder: Path, tags: list[str], db: dict) -> None:
        now = _now()
        expires = {role: db["pinned_expires"].get(role) or stamp(now + EXPIRY[role]) for role in ONLINE_ROLES}
        for name, data in self._view_documents(repo, tags, db, expires).items():
            write_atomic(folder / name, data, mode=0o644)
        meta = {"tags": tags, "version": db["version"], "timestamp_expires": expires["timestamp"]}
        write_atomic(folder / VIEW_META, json.dumps(meta).encode(), mode=0o644)

    def _view_documents(self, repo: str, tags: list[str], db: dict, expires: dict[str, str]) -> dict[str, bytes]:
        """targets, snapshot and timestamp of `repo`'s view of `tags` at the repository's version."""
        version, root = db["version"], self.latest_root(repo)
        listing = db["production_targets" if repo == PRODUCTION else "targets"]
        chosen = {name: info for name, info in listing.items() if visible(info, set(tags))}
        targets = sign_document({"_type": "Targets", "expires": expires["targets"], "targets": chosen,
                                 "version": version}, self.signers(root, "targets"))
        snapshot = sign_document({"_type": "Snapshot", "expires": expires["snapshot"],
                                  "meta": {"targets.json": meta_entry(targets, version)}, "version": version},
                                 self.signers(root, "snapshot"))
        timestamp = sign_document({"_type": "Timestamp", "expires": expires["timestamp"],
                                   "meta": {"snapshot.json": meta_entry(snapshot, version)}, "version": version},
                                  self.signers(root, "timestamp"))
        return {"targets.json": targets, "snapshot.json": snapshot, "timestamp.json": timestamp}

    # --- offline bundles -----------------------------------------------------------------
    def offline_metadata(self, repo: str, tag: str, targets: list[str], expires: datetime) -> dict[str, bytes]:
        """The TUF metadata of an offline bundle of `targets`, by file name: every root of `repo`,
        the view of `tag` re-signed to expire at `expires` (what fioctl's offline-update has the
        factory do: `POST /ota/factories/<f>/targets/<target>/meta/` with `expires-in-days`), and
        `bundle-targets.json`, signed by the Targets role's keys (fioctl `ouBundleTufMeta`; the
        production ones are the offline keys `fioctl targets offline-update sign` uses)."""
        when = stamp(expires)
        with exclusive(self.home.tuf_lock):
            db = self._load_db()
            files = {f"{v}.root.json": self.root_json(repo, v) for v in self.root_versions(repo)}
            files |= self._view_documents(repo, [tag], db, dict.fromkeys(ONLINE_ROLES, when))
            bundle = {"_type": "Targets", "expires": when, "version": db["version"],
                      "x-fio-offline-bundle": {"type": repo, "tag": tag, "targets": sorted(targets)}}
            files["bundle-targets.json"] = sign_document(bundle, self.signers(self.latest_root(repo), "targets"))
        return files

    @staticmethod
    def _view_meta(folder: Path) -> dict | None:
        try:
            return json.loads((folder / VIEW_META).read_text())
        except FileNotFoundError:
            return None

    # --- storage -------------------------------------------------------------------------
    def _bump(self, db: dict, pinned: dict[str, str]) -> None:
        db["version"] += 1
        db["pinned_expires"] = pinned
        self._save_db(db)

    def _load_db(self) -> dict:
        return json.loads(self.home.tuf_targets_db.read_text())

    def _save_db(self, db: dict) -> None:
        write_atomic(self.home.tuf_targets_db, json.dumps(db, indent=2, sort_keys=True).encode(), mode=0o644)

    def _write_root(self, repos: tuple[str, ...], signed: dict, signers: list[CryptoSigner]) -> None:
        """Sign `signed` once (RSA-PSS signatures differ each time) and write it into each of `repos`."""
        data = sign_document(signed, signers)
        for repo in repos:
            write_atomic(self.home.tuf_roots(repo) / f"{signed['version']}.root.json", data, mode=0o644)

    def _key_path(self, keyid: str) -> Path:
        return self.home.tuf_keys / f"{keyid}.pem"

    def _new_signer(self, keytype: str = "ED25519") -> CryptoSigner:
        """A new key, saved (PEM, 0600) under its key id before any root names it."""
        signer = new_signer(keytype)
        write_atomic(self._key_path(signer.public_key.keyid), signer.private_bytes, mode=0o600)
        return signer

    def signers(self, root: dict, role: str) -> list[CryptoSigner]:
        """A signer for every key `root` (a root's signed part) names for `role`."""
        return [CryptoSigner(load_pem_private_key(self._key_path(keyid).read_bytes(), password=None),
                             key_from_flavour(keyid, root["keys"][keyid]))
                for keyid in root["roles"][role]["keyids"]]

    def _check_keys(self) -> None:
        """Every key the newest roots name is here: a home another version of the factory made
        may keep them elsewhere, and the gateway would then answer 500 to every device."""
        missing = sorted({keyid for repo in REPOS for role in self.latest_root(repo)["roles"].values()
                          for keyid in role["keyids"] if not self._key_path(keyid).exists()})
        if missing:
            raise self._other_version(f"has no private key for {', '.join(missing)}")

    def _other_version(self, what: str) -> FactoryHomeError:
        return FactoryHomeError(f"the factory home {self.home.root} {what} (made by another version of "
                                "fioup-flow-factory?): stop it with `down`, remove the folder, and run `up` again")
