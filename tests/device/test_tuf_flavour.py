"""The device's TUF verifier against a hand-made repository in the FoundriesFactory flavour.

Each rule of the client workflow (python-tuf's TrustedMetadataSet, and this flavour's own
departures) is checked on metadata built here, key by key: an RSA root 1 rotated to an ED25519
root 2, thresholds, versions, expiry, hashes and lengths, the form of the signed bytes.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.exceptions import (
    BadVersionNumberError,
    EqualVersionNumberError,
    ExpiredMetadataError,
    LengthOrHashMismatchError,
    RepositoryError,
    UnsignedMetadataError,
)

from fioup_flow.errors import MetadataUpdateError
from fioup_flow.factory.tufrepo import key_entry, meta_entry, new_signer, sign_document, signature_entry, stamp
from fioup_flow.tuf.flavour import FlavourError, canonical_bytes
from fioup_flow.tuf.roots import shipped_chain
from fioup_flow.tuf.trusted_set import TrustedSet
from fioup_flow.tuf.updater import Updater

LATER = datetime.now(UTC) + timedelta(days=30)
EARLIER = datetime.now(UTC) - timedelta(days=1)


@pytest.fixture(scope="module")
def rsa_key() -> CryptoSigner:
    """One RSA key for the module (4096-bit keys take a while to make)."""
    return new_signer("RSA")


@dataclass
class Repo:
    """A hand-made repository: its roots so far, and the signers of each role now."""

    keys: dict[str, list[CryptoSigner]]
    roots: list[bytes] = field(default_factory=list)

    def rotate(self, role_keys: dict[str, list[CryptoSigner]], signers: list[CryptoSigner] | None = None,
               expires: datetime = LATER, **extra) -> bytes:
        """The next root with `role_keys` (threshold: all of them), signed by the old and the new
        root keys unless `signers` says otherwise."""
        old = self.keys["root"]
        self.keys = self.keys | role_keys
        signed = {"_type": "Root", "consistent_snapshot": False, "expires": stamp(expires),
                  "keys": {s.public_key.keyid: key_entry(s.public_key) for ks in self.keys.values() for s in ks},
                  "roles": {r: {"keyids": [s.public_key.keyid for s in ks], "threshold": len(ks)}
                            for r, ks in self.keys.items()},
                  "version": len(self.roots) + 1, **extra}
        default = old + [k for k in self.keys["root"] if k not in old] if self.roots else self.keys["root"]
        self.roots.append(sign_document(signed, default if signers is None else signers))
        return self.roots[-1]

    def targets(self, version: int, names: tuple[str, ...] = ("t-1",), expires: datetime = LATER) -> bytes:
        files = {n: {"custom": {"version": n.split("-")[-1], "hardwareIds": ["hw"], "tags": ["main"]},
                     "hashes": {"sha256": "ab" * 32}, "length": 0} for n in names}
        return self.sign("targets", {"_type": "Targets", "expires": stamp(expires), "targets": files,
                                     "version": version})

    def snapshot(self, version: int, targets: bytes, targets_version: int | None = None,
                 expires: datetime = LATER) -> bytes:
        meta = {"targets.json": meta_entry(targets, targets_version or version)}
        return self.sign("snapshot", {"_type": "Snapshot", "expires": stamp(expires), "meta": meta,
                                      "version": version})

    def timestamp(self, version: int, snapshot: bytes, snapshot_version: int | None = None,
                  expires: datetime = LATER) -> bytes:
        meta = {"snapshot.json": meta_entry(snapshot, snapshot_version or version)}
        return self.sign("timestamp", {"_type": "Timestamp", "expires": stamp(expires), "meta": meta,
                                       "version": version})

    def release(self, version: int, names: tuple[str, ...] = ("t-1",)) -> tuple[bytes, bytes, bytes]:
        """(timestamp, snapshot, targets), all of `version`."""
        targets = self.targets(version, names)
        snapshot = self.snapshot(version, targets)
        return self.timestamp(version, snapshot), snapshot, targets

    def sign(self, role: str, signed: dict) -> bytes:
        return sign_document(signed, self.keys[role])

    def trusted_roots(self) -> TrustedSet:
        """A trusted set that walked every root from the first."""
        trusted = TrustedSet(self.roots[0])
        for root in self.roots[1:]:
            trusted.update_root(root)
        return trusted


@pytest.fixture()
def repo(rsa_key) -> Repo:
    """Root 1 with the RSA root key and ED25519 online keys; root 2 moves the root key to ED25519
    and carries fields of its own, as a real factory's chain does."""
    made = Repo({"root": [rsa_key], "targets": [new_signer()], "snapshot": [new_signer()],
                 "timestamp": [new_signer()]})
    made.rotate({})
    made.rotate({"root": [new_signer()]}, **{"x-changelog": {"message": "root key to ED25519"},
                                               "targets-signatures": {}})
    return made


def load_release(trusted: TrustedSet, release: tuple[bytes, bytes, bytes]) -> None:
    timestamp, snapshot, targets = release
    trusted.update_timestamp(timestamp)
    trusted.update_snapshot(snapshot)
    trusted.update_targets(targets)


def edited(data: bytes, change) -> bytes:
    """`data` with `change` applied to the parsed document, signatures left as they were."""
    document = json.loads(data)
    change(document)
    return canonical_bytes(document)


# --- the flavour ---------------------------------------------------------------------------------

def test_an_rsa_root_rotated_to_an_ed25519_root_verifies_and_keeps_its_unknown_fields(repo) -> None:
    root1, root2 = (json.loads(r) for r in repo.roots)
    assert [s["method"] for s in root1["signatures"]] == ["rsassa-pss-sha256"]
    assert sorted(s["method"] for s in root2["signatures"]) == ["ed25519", "rsassa-pss-sha256"]
    trusted = repo.trusted_roots()
    load_release(trusted, repo.release(1))
    assert trusted.root.version == 2 and trusted.root.unrecognized_fields == {
        "x-changelog": {"message": "root key to ED25519"}, "targets-signatures": {}}
    assert trusted.root.keys[trusted.root.roles["root"].keyids[0]].keytype == "ed25519"
    assert set(trusted.targets.targets) == {"t-1"} and trusted.targets.targets["t-1"].custom["version"] == "1"


def test_key_ids_are_looked_up_never_derived(repo) -> None:
    """Real roots also carry ids made the TUF spec's way: whatever id the root gives a key is its id."""
    made = new_signer()
    key = made.public_key
    renamed = CryptoSigner(made._private_key, SSlibKey("a-spec-style-id", key.keytype, key.scheme, key.keyval))
    repo.rotate({"timestamp": [renamed]})
    assert repo.trusted_roots().update_timestamp(repo.release(1)[0]).version == 1


def test_key_types_roles_and_type_names_are_read_whatever_their_case(repo) -> None:
    def lower(document: dict) -> None:
        document["signed"]["_type"] = "timestamp"
    trusted = repo.trusted_roots()
    signer = repo.keys["timestamp"][0]
    document = json.loads(repo.release(1)[0])
    lower(document)
    document["signatures"] = [signature_entry(signer, canonical_bytes(document["signed"]))]
    assert trusted.update_timestamp(canonical_bytes(document)).version == 1


def test_the_signed_bytes_are_sorted_compact_and_ordinarily_escaped(repo) -> None:
    root1 = json.loads(repo.roots[0])
    payload = canonical_bytes(root1["signed"])
    assert b"\\n-----END PUBLIC KEY-----" in payload and b"\n" not in payload and b", " not in payload
    TrustedSet(json.dumps(root1, indent=2).encode())  # served with whitespace, it is the same document


@pytest.mark.parametrize("form", [
    pytest.param(lambda s: json.dumps(s, sort_keys=True, separators=(",", ":")).replace("\\n", "\n").encode(),
                 id="olpc-raw-newlines"),
    pytest.param(lambda s: json.dumps(s, sort_keys=True, indent=2).encode(), id="indented"),
    pytest.param(lambda s: json.dumps(dict(reversed(s.items())), separators=(",", ":")).encode(), id="unsorted"),
])
def test_a_payload_signed_in_another_form_than_the_canonical_one_is_refused(repo, rsa_key, form) -> None:
    root1 = json.loads(repo.roots[0])
    root1["signatures"] = [signature_entry(rsa_key, form(root1["signed"]))]
    with pytest.raises(UnsignedMetadataError):
        TrustedSet(canonical_bytes(root1))


@pytest.mark.parametrize("raw, why", [
    (b'{"signatures":[],"signed":{"_type":"Root","_type":"Timestamp"}}', "repeats a name"),
    (b'{"signatures":[],"signed":{"version":NaN}}', "NaN"),
    (b"[1, 2]", "JSON object"),
    (b'{"signatures":[],"signed":{"_type":"Targets"}}', "expected Root"),
])
def test_metadata_that_reads_more_than_one_way_or_is_not_this_flavour_is_refused(raw, why) -> None:
    with pytest.raises(FlavourError, match=why):
        TrustedSet(raw)


def _hex_sig(document: dict) -> None:
    document["signatures"][0]["sig"] = base64.b64decode(document["signatures"][0]["sig"]).hex()


def _unknown_method(document: dict) -> None:
    document["signatures"][0]["method"] = "ecdsa"


def _twice(document: dict) -> None:
    document["signatures"] *= 2


@pytest.mark.parametrize("change, refusal", [
    (_hex_sig, UnsignedMetadataError),  # hex digits read as base64 are another signature
    (_unknown_method, FlavourError),
    (_twice, FlavourError),
])
def test_signatures_are_base64_by_a_known_method_and_one_per_key(repo, change, refusal) -> None:
    with pytest.raises(refusal):
        repo.trusted_roots().update_timestamp(edited(repo.release(1)[0], change))


# --- roots ---------------------------------------------------------------------------------------

def test_a_root_signed_only_by_the_new_keys_is_refused(repo) -> None:
    new_key = new_signer()
    repo.rotate({"root": [new_key]}, signers=[new_key])
    with pytest.raises(UnsignedMetadataError, match="root was signed by 0/1"):
        repo.trusted_roots()


def test_a_root_signed_only_by_the_old_keys_is_refused(repo) -> None:
    old = repo.keys["root"]
    repo.rotate({"root": [new_signer()]}, signers=old)
    with pytest.raises(UnsignedMetadataError):
        repo.trusted_roots()


def test_a_root_must_be_exactly_one_version_newer(repo) -> None:
    trusted = repo.trusted_roots()
    repo.rotate({})
    repo.rotate({})
    with pytest.raises(BadVersionNumberError):
        trusted.update_root(repo.roots[-1])


def test_a_root_below_its_threshold_is_refused_and_meeting_it_is_accepted(repo) -> None:
    two = [new_signer(), new_signer()]
    repo.rotate({"root": two})  # old key and both new ones: accepted
    trusted = repo.trusted_roots()
    repo.rotate({}, signers=[two[0]])  # one of the two the threshold needs
    with pytest.raises(UnsignedMetadataError, match="1/2"):
        trusted.update_root(repo.roots[-1])


def test_an_unknown_key_s_signature_counts_for_nothing(repo) -> None:
    stranger = new_signer()
    timestamp = json.loads(repo.release(1)[0])
    timestamp["signatures"] = [signature_entry(stranger, canonical_bytes(timestamp["signed"]))]
    with pytest.raises(UnsignedMetadataError, match="0/1"):
        repo.trusted_roots().update_timestamp(canonical_bytes(timestamp))


def test_an_expired_root_may_lead_to_a_newer_one_but_the_final_root_may_not_be_expired(repo) -> None:
    repo.rotate({}, expires=EARLIER)
    repo.rotate({})
    load_release(repo.trusted_roots(), repo.release(1))  # root 3 expired on the way: fine
    repo.rotate({}, expires=EARLIER)
    with pytest.raises(ExpiredMetadataError, match="root"):
        repo.trusted_roots().update_timestamp(repo.release(1)[0])


# --- timestamp, snapshot, targets ---------------------------------------------------------------

def test_a_timestamp_cannot_go_back_in_version(repo) -> None:
    trusted = repo.trusted_roots()
    trusted.update_timestamp(repo.release(2)[0])
    with pytest.raises(BadVersionNumberError):
        trusted.update_timestamp(repo.release(1)[0])


def test_the_very_timestamp_held_is_no_update(repo) -> None:
    trusted = repo.trusted_roots()
    timestamp = repo.release(1)[0]
    trusted.update_timestamp(timestamp)
    with pytest.raises(EqualVersionNumberError):
        trusted.update_timestamp(edited(timestamp, lambda d: d["signatures"].reverse()))


def test_a_timestamp_of_the_same_version_naming_another_snapshot_is_taken_and_the_snapshot_rechecked(repo) -> None:
    """After a tag change the gateway serves the other view's timestamp at the same version."""
    trusted = repo.trusted_roots()
    main = repo.release(5, ("main-1",))
    load_release(trusted, main)
    devel = repo.release(5, ("devel-2",))
    again = TrustedSet(json.dumps(json.loads(repo.roots[-1])).encode())  # a new refresh from the stored root
    again.update_timestamp(main[0])
    again.update_timestamp(devel[0])
    with pytest.raises(LengthOrHashMismatchError):
        again.update_snapshot(main[1], trusted=True)  # the snapshot held is not the one named now
    again.update_snapshot(devel[1])
    again.update_targets(devel[2])
    assert set(again.targets.targets) == {"devel-2"}


def test_a_timestamp_naming_an_older_snapshot_is_refused_even_at_the_same_version(repo) -> None:
    trusted = repo.trusted_roots()
    targets = repo.targets(5)
    trusted.update_timestamp(repo.timestamp(5, repo.snapshot(5, targets)))
    with pytest.raises(BadVersionNumberError, match="older"):
        trusted.update_timestamp(repo.timestamp(5, repo.snapshot(4, targets), snapshot_version=4))


def test_expired_timestamp_snapshot_or_targets_are_refused(repo) -> None:
    targets = repo.targets(1)
    snapshot = repo.snapshot(1, targets)
    with pytest.raises(ExpiredMetadataError, match="timestamp"):
        repo.trusted_roots().update_timestamp(repo.timestamp(1, snapshot, expires=EARLIER))
    old_snapshot = repo.snapshot(1, targets, expires=EARLIER)
    trusted = repo.trusted_roots()
    trusted.update_timestamp(repo.timestamp(1, old_snapshot))
    with pytest.raises(ExpiredMetadataError, match="snapshot"):
        trusted.update_snapshot(old_snapshot)
    old_targets = repo.targets(1, expires=EARLIER)
    trusted = repo.trusted_roots()
    snapshot = repo.snapshot(1, old_targets)
    trusted.update_timestamp(repo.timestamp(1, snapshot))
    trusted.update_snapshot(snapshot)
    with pytest.raises(ExpiredMetadataError, match="targets"):
        trusted.update_targets(old_targets)


def test_a_snapshot_other_than_the_timestamp_names_is_refused(repo) -> None:
    """A snapshot mixed from two versions: the new timestamp with the previous snapshot."""
    old = repo.release(1)
    new = repo.release(2)
    trusted = repo.trusted_roots()
    trusted.update_timestamp(new[0])
    with pytest.raises(LengthOrHashMismatchError):
        trusted.update_snapshot(old[1])


def test_a_snapshot_may_not_drop_or_roll_back_targets(repo) -> None:
    trusted = repo.trusted_roots()
    load_release(trusted, repo.release(3))
    trusted_again = TrustedSet(repo.roots[-1])
    trusted_again.update_timestamp(repo.release(3)[0])
    trusted_again.update_snapshot(repo.release(3)[1], trusted=True)  # held copy: an intermediate
    targets = repo.targets(2)
    rolled_back = repo.snapshot(4, targets, targets_version=2)
    with pytest.raises(BadVersionNumberError):
        fresh = TrustedSet(repo.roots[-1])
        fresh.update_timestamp(repo.timestamp(3, repo.release(3)[1]))
        fresh.update_snapshot(repo.release(3)[1], trusted=True)
        fresh.update_snapshot(rolled_back, trusted=True)
    dropped = repo.sign("snapshot", {"_type": "Snapshot", "expires": stamp(LATER), "meta": {}, "version": 4})
    with pytest.raises(RepositoryError, match="missing targets.json"):
        fresh = TrustedSet(repo.roots[-1])
        fresh.update_timestamp(repo.timestamp(3, repo.release(3)[1]))
        fresh.update_snapshot(repo.release(3)[1], trusted=True)
        fresh.update_snapshot(dropped, trusted=True)


def test_targets_must_match_the_snapshot_s_hash_length_and_version_and_the_targets_key(repo) -> None:
    targets = repo.targets(1)
    snapshot = repo.snapshot(1, targets)
    trusted = repo.trusted_roots()
    trusted.update_timestamp(repo.timestamp(1, snapshot))
    trusted.update_snapshot(snapshot)
    tampered = edited(targets, lambda d: d["signed"]["targets"]["t-1"]["custom"].update(version="99"))
    with pytest.raises(LengthOrHashMismatchError):
        trusted.update_targets(tampered)
    other_version = repo.targets(2)
    snapshot = repo.snapshot(1, other_version, targets_version=1)
    trusted = repo.trusted_roots()
    trusted.update_timestamp(repo.timestamp(1, snapshot))
    trusted.update_snapshot(snapshot)
    with pytest.raises(BadVersionNumberError):
        trusted.update_targets(other_version)
    by_snapshot_key = sign_document(json.loads(targets)["signed"], repo.keys["snapshot"])
    snapshot = repo.snapshot(1, by_snapshot_key)
    trusted = repo.trusted_roots()
    trusted.update_timestamp(repo.timestamp(1, snapshot))
    trusted.update_snapshot(snapshot)
    with pytest.raises(UnsignedMetadataError):
        trusted.update_targets(by_snapshot_key)


# --- the updater: roots from the image, what is kept, fast-forward recovery ---------------------

@dataclass
class Gateway:
    """The files a gateway serves, by name; `served` counts the requests."""

    files: dict[str, bytes] = field(default_factory=dict)
    served: list[str] = field(default_factory=list)

    def fetch(self, name: str, _max_length: int) -> bytes | None:
        self.served.append(name)
        return self.files.get(name)

    def publish(self, repo: Repo, release: tuple[bytes, bytes, bytes]) -> None:
        self.files |= dict(zip(("timestamp.json", "snapshot.json", "targets.json"), release))
        self.files |= {f"{i}.root.json": root for i, root in enumerate(repo.roots, 1)}


def image(tmp_path: Path, roots: list[bytes]) -> Path:
    for version, root in enumerate(roots, 1):
        (tmp_path / "image" / "ci").mkdir(parents=True, exist_ok=True)
        (tmp_path / "image" / "ci" / f"{version}.root.json").write_bytes(root)
    return tmp_path / "image"


def test_a_device_starts_from_its_image_s_roots_and_walks_on_to_the_gateway_s_newest(repo, tmp_path) -> None:
    roots_dir = image(tmp_path, repo.roots[:1])
    repo.rotate({"timestamp": [new_signer()]})
    gateway = Gateway()
    gateway.publish(repo, repo.release(1))
    updater = Updater(tmp_path / "store", gateway.fetch, lambda: shipped_chain(roots_dir, False))
    assert set(updater.refresh().targets) == {"t-1"}
    assert (tmp_path / "store" / "root.json").read_bytes() == repo.roots[-1]
    assert [f for f in gateway.served if f.endswith("root.json")] == ["2.root.json", "3.root.json", "4.root.json"]
    for name in ("timestamp.json", "snapshot.json", "targets.json"):
        assert (tmp_path / "store" / name).read_bytes() == gateway.files[name], "kept as served"


def test_no_root_in_the_image_is_a_clear_error_naming_where_it_looked(tmp_path) -> None:
    with pytest.raises(MetadataUpdateError, match=f"{tmp_path / 'image' / 'prod'} holds no N.root.json"):
        shipped_chain(tmp_path / "image", True)


def test_a_failed_refresh_keeps_what_was_trusted(repo, tmp_path) -> None:
    gateway = Gateway()
    gateway.publish(repo, repo.release(1))
    updater = Updater(tmp_path / "store", gateway.fetch, lambda: repo.roots[:1])
    updater.refresh()
    before = {p.name: p.read_bytes() for p in (tmp_path / "store").iterdir()}
    timestamp, snapshot, targets = repo.release(2, ("t-1", "t-2"))
    gateway.files |= {"timestamp.json": timestamp, "snapshot.json": snapshot,
                      "targets.json": edited(targets, lambda d: d["signed"]["targets"].pop("t-1"))}
    with pytest.raises(LengthOrHashMismatchError):
        updater.refresh()
    assert (tmp_path / "store" / "targets.json").read_bytes() == before["targets.json"]
    assert (tmp_path / "store" / "snapshot.json").read_bytes() == snapshot, "a verified snapshot is kept"


@pytest.mark.parametrize("rotated", [("timestamp",), ("snapshot",), ("timestamp", "snapshot")])
def test_after_a_fast_forward_attack_a_rotation_of_the_online_keys_lets_the_device_recover(repo, tmp_path,
                                                                                            rotated) -> None:
    """An attacker with the online keys pushed the device to timestamp version 1000; once the
    factory rotates the timestamp or the snapshot keys, the honest timestamps (version 3) are
    taken again (TUF spec 5.3.11: the timestamp and snapshot held are forgotten)."""
    gateway = Gateway()
    targets = repo.targets(2)
    snapshot = repo.snapshot(2, targets)
    gateway.publish(repo, (repo.timestamp(1000, snapshot, snapshot_version=2), snapshot, targets))
    updater = Updater(tmp_path / "store", gateway.fetch, lambda: repo.roots[:1])
    updater.refresh()
    gateway.publish(repo, repo.release(3))
    with pytest.raises(BadVersionNumberError):
        updater.refresh()
    repo.rotate({role: [new_signer()] for role in rotated})
    gateway.publish(repo, repo.release(3))
    assert updater.refresh().version == 3
    assert json.loads((tmp_path / "store" / "timestamp.json").read_bytes())["signed"]["version"] == 3
