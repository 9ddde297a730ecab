"""Attacks on the FoundriesFactory TUF flavour, through the real gateway: each is refused.

A device trusts the metadata of its own tag (the sample release 1, real apps in the real
registry); the repository then moves on to release 2, and an attacker changes what the gateway
serves (the files of the device's view, or its roots). Each time `fioup-flow apply` must exit
20, the engine must hold no container and no image, and the targets the device trusted before
must stay as they were. One device without an attack installs, so these checks can fail.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import Device, clean_engine, new_device

from fioup_flow.factory.publish import default_hwid
from fioup_flow.factory.tufrepo import (
    CI,
    TufRepository,
    meta_entry,
    new_signer,
    next_root,
    sign_document,
    signature_entry,
)
from fioup_flow.tuf.flavour import canonical_bytes

pytestmark = pytest.mark.factory


def publish_release(repo: TufRepository, tag: str, version: int) -> None:
    """Release `version` of the session's samples (already in the registry) as a Target of `tag`."""
    name = f"{default_hwid()}-lmp-{version}"
    entry = json.loads(json.dumps(repo.targets()[name]))
    entry["custom"]["tags"] = [tag]
    repo.add_targets({f"{name}-{tag}": entry})


@dataclass
class Victim:
    """A device following a tag of its own, with release 1 trusted and nothing installed."""

    device: Device
    tag: str
    repo: TufRepository

    def publish(self, version: int) -> None:
        publish_release(self.repo, self.tag, version)

    def served(self, name: str) -> Path:
        """The file of this device's view that the gateway serves (signed now if stale)."""
        return self.repo.view_file(CI, [self.tag], name)

    def serve(self, name: str, data: bytes) -> None:
        self.served(name).write_bytes(data)

    def trusted(self) -> bytes:
        return (self.device.sota_dir / "tuf" / "targets.json").read_bytes()


@pytest.fixture
def victim(factory, releases, engine, tmp_path) -> Victim:
    clean_engine(engine)
    tag, repo = f"t{uuid.uuid4().hex[:8]}", TufRepository(factory.home)
    publish_release(repo, tag, 1)
    made = Victim(new_device(factory.info, tmp_path / "sota", "--tag", tag), tag, repo)
    checked = made.device.run("check")
    assert checked.returncode == 0, checked.stderr
    yield made
    clean_engine(engine)


def refused(victim: Victim, engine) -> str:
    """`apply` fails with 20, nothing is installed, the targets trusted before are kept; its stderr."""
    before = victim.trusted()
    done = victim.device.run("apply")
    assert done.returncode == 20, done.stdout + done.stderr
    assert engine.containers.list(all=True) == [], "no container was made"
    assert engine.images.list() == [], "no image was loaded"
    assert victim.trusted() == before
    return done.stderr


def edited(data: bytes, change: Callable[[dict], None]) -> bytes:
    document = json.loads(data)
    change(document)
    return canonical_bytes(document)


def test_without_an_attack_the_same_device_installs_release_2(victim, engine) -> None:
    victim.publish(2)
    done = victim.device.run("apply")
    assert done.returncode == 0, done.stderr
    assert engine.containers.list() and engine.images.list()


def _evil(document: dict) -> None:
    """Every Target claims version 9 (the same length: the hash, not the length, tells)."""
    for target in document["signed"]["targets"].values():
        target["custom"]["version"] = "9"


def test_tampered_targets_are_refused_by_the_snapshot_s_hash(victim, engine) -> None:
    victim.publish(2)
    victim.serve("targets.json", edited(victim.served("targets.json").read_bytes(), _evil))
    assert "LengthOrHashMismatchError" in refused(victim, engine)


def test_tampered_targets_with_every_hash_relinked_are_refused_by_the_timestamp_s_signature(victim, engine) -> None:
    victim.publish(2)
    def relink(name: str, data: bytes) -> Callable[[dict], None]:
        return lambda d: d["signed"]["meta"].update({name: meta_entry(data, d["signed"]["version"])})

    targets = edited(victim.served("targets.json").read_bytes(), _evil)
    snapshot = edited(victim.served("snapshot.json").read_bytes(), relink("targets.json", targets))
    timestamp = edited(victim.served("timestamp.json").read_bytes(), relink("snapshot.json", snapshot))
    for name, data in (("targets.json", targets), ("snapshot.json", snapshot), ("timestamp.json", timestamp)):
        victim.serve(name, data)
    assert "timestamp was signed by 0/1 keys" in refused(victim, engine)


def test_metadata_signed_by_a_key_the_root_does_not_know_is_refused(victim, engine) -> None:
    victim.publish(2)
    stranger = new_signer()
    targets = sign_document(json.loads(edited(victim.served("targets.json").read_bytes(), _evil))["signed"], [stranger])
    snapshot = json.loads(victim.served("snapshot.json").read_bytes())["signed"]
    snapshot["meta"]["targets.json"] = meta_entry(targets, snapshot["version"])
    snapshot = sign_document(snapshot, [stranger])
    timestamp = json.loads(victim.served("timestamp.json").read_bytes())["signed"]
    timestamp["meta"]["snapshot.json"] = meta_entry(snapshot, timestamp["version"])
    for name, data in (("targets.json", targets), ("snapshot.json", snapshot),
                       ("timestamp.json", sign_document(timestamp, [stranger]))):
        victim.serve(name, data)
    assert "timestamp was signed by 0/1 keys" in refused(victim, engine)


def test_a_timestamp_with_fewer_signatures_than_its_threshold_is_refused(victim, engine) -> None:
    victim.repo.rotate_root(("timestamp",), threshold=2)  # the factory now signs timestamps with two keys
    victim.publish(2)
    served = victim.served("timestamp.json").read_bytes()
    assert len(json.loads(served)["signatures"]) == 2
    victim.serve("timestamp.json", edited(served, lambda d: d["signatures"].pop()))
    assert "timestamp was signed by 1/2 keys" in refused(victim, engine)


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets"])
def test_expired_metadata_is_refused(victim, engine, role) -> None:
    victim.publish(2)
    victim.repo.resign({role: datetime.now(UTC) - timedelta(minutes=1)})
    try:
        assert f"{role}.json is expired" in refused(victim, engine)
    finally:
        victim.repo.resign()


def test_an_expired_final_root_is_refused(victim, engine) -> None:
    victim.repo.rotate_root(("root",), expires=datetime.now(UTC) - timedelta(minutes=1))
    try:
        assert "the final root.json is expired" in refused(victim, engine)
    finally:
        victim.repo.rotate_root(("root",))  # an expired root on the way to a valid one is fine


def test_a_version_rolled_back_is_refused(victim, engine) -> None:
    old = {name: victim.served(name).read_bytes() for name in ("timestamp.json", "snapshot.json", "targets.json")}
    victim.publish(2)
    assert victim.device.run("check").returncode == 0  # the device now trusts the newer version
    victim.publish(3)
    for name, data in old.items():
        victim.serve(name, data)
    assert "older than" in refused(victim, engine)


def test_a_frozen_timestamp_is_refused_once_it_expires(victim, engine) -> None:
    victim.repo.resign({"timestamp": datetime.now(UTC) + timedelta(seconds=2)})
    try:
        assert victim.device.run("check").returncode == 0
        frozen = victim.served("timestamp.json").read_bytes()
        victim.publish(2)  # the repository moves on; the attacker keeps serving what it had
        victim.serve("timestamp.json", frozen)
        time.sleep(3)
        assert "timestamp.json is expired" in refused(victim, engine)
    finally:
        victim.repo.resign()


def test_a_snapshot_mixed_from_two_versions_is_refused(victim, engine) -> None:
    old_snapshot = victim.served("snapshot.json").read_bytes()
    victim.publish(2)
    victim.served("timestamp.json")  # the new version is signed
    victim.serve("snapshot.json", old_snapshot)
    assert "LengthOrHashMismatchError" in refused(victim, engine)


def test_a_root_rotation_only_the_new_keys_sign_is_refused(victim, engine) -> None:
    victim.publish(2)
    attacker = new_signer()
    current = victim.repo.latest_root(CI)
    rotated = next_root(current, {"root": [attacker.public_key], "timestamp": [attacker.public_key]}, None, "mine now")
    path = victim.repo.home.tuf_roots(CI) / f"{rotated['version']}.root.json"
    path.write_bytes(sign_document(rotated, [attacker]))
    try:
        assert "root was signed by 0/1 keys" in refused(victim, engine)
    finally:
        path.unlink()


def test_a_payload_signed_in_a_form_other_than_the_canonical_one_is_refused(victim, engine) -> None:
    """Signed by the real timestamp key, but over indented JSON: a verifier of the bytes as they
    were signed would take it; this one checks the canonical form only."""
    victim.publish(2)
    timestamp = json.loads(victim.served("timestamp.json").read_bytes())
    signers = victim.repo.signers(victim.repo.latest_root(CI), "timestamp")
    payload = json.dumps(timestamp["signed"], indent=2, sort_keys=True).encode()
    timestamp["signatures"] = [signature_entry(s, payload) for s in signers]
    victim.serve("timestamp.json", canonical_bytes(timestamp))
    assert f"timestamp was signed by 0/{len(signers)} keys" in refused(victim, engine)
