"""The TUF repository on disk: views filtered per device, versions that only grow, valid signatures.

These read the files the gateway serves; test_core_server.py checks them with ngclient over mTLS.
"""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta

import pytest
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from fioup_flow.factory.home import FactoryHome, FactoryHomeError
from fioup_flow.factory.tufrepo import TufRepository


def target(version: int, hwid: str, tags: list[str]) -> dict:
    custom = {"version": str(version), "hardwareIds": [hwid], "tags": tags, "name": f"{hwid}-lmp",
              "docker_compose_apps": {}}
    return {f"{hwid}-lmp-{version}": {"length": 0, "hashes": {"sha256": "ab" * 32}, "custom": custom}}


@pytest.fixture()
def repo(tmp_path) -> TufRepository:
    repo = TufRepository(FactoryHome(tmp_path))
    repo.init()
    repo.add_targets(target(1, "amd64-linux", ["main"]) | target(1, "arm64-linux", ["main"])
                     | target(2, "amd64-linux", ["devel"]) | target(3, "amd64-linux", ["main", "devel"]))
    return repo


def _load(repo: TufRepository, hwid: str, tags: list[str], name: str) -> Metadata:
    return Metadata.from_bytes(repo.view_file(hwid, tags, name).read_bytes())


def _root(repo: TufRepository) -> Root:
    return Metadata[Root].from_bytes(repo.trusted_root_json()).signed


def test_init_makes_root_1_and_private_keys_and_is_done_once(repo):
    root = repo.trusted_root_json()
    repo.init()
    assert repo.trusted_root_json() == root and repo.root_versions() == [1]
    keys = list(repo.home.tuf_keys.glob("*.pem"))
    assert len(keys) == 4 and all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    assert set(_root(repo).roles) == {"root", "targets", "snapshot", "timestamp"}


def test_a_view_lists_only_the_targets_for_the_hardware_id_and_tags(repo):
    assert set(_load(repo, "amd64-linux", ["main"], "targets.json").signed.targets) == {
        "amd64-linux-lmp-1", "amd64-linux-lmp-3"}
    assert set(_load(repo, "amd64-linux", ["devel"], "targets.json").signed.targets) == {
        "amd64-linux-lmp-2", "amd64-linux-lmp-3"}
    assert set(_load(repo, "arm64-linux", ["main"], "targets.json").signed.targets) == {"arm64-linux-lmp-1"}
    assert _load(repo, "riscv-linux", ["main"], "targets.json").signed.targets == {}


def test_view_metadata_is_signed_by_the_root_s_keys_and_versions_agree(repo):
    root = _root(repo)
    timestamp = _load(repo, "amd64-linux", ["main"], "timestamp.json")
    snapshot = _load(repo, "amd64-linux", ["main"], "snapshot.json")
    targets = _load(repo, "amd64-linux", ["main"], "targets.json")
    for role, md in (("timestamp", timestamp), ("snapshot", snapshot), ("targets", targets)):
        root.verify_delegate(role, md.signed_bytes, md.signatures)
    assert isinstance(timestamp.signed, Timestamp) and isinstance(snapshot.signed, Snapshot)
    assert isinstance(targets.signed, Targets)
    assert timestamp.signed.snapshot_meta.version == snapshot.signed.version == repo.version()
    assert snapshot.signed.meta["targets.json"].version == targets.signed.version == repo.version()


def test_the_version_only_grows_whatever_the_tags(repo):
    main_version = _load(repo, "amd64-linux", ["main"], "targets.json").signed.version
    repo.add_targets(target(4, "amd64-linux", ["main"]))
    devel = _load(repo, "amd64-linux", ["devel"], "targets.json").signed
    main = _load(repo, "amd64-linux", ["main"], "targets.json").signed
    assert devel.version == main.version > main_version
    assert "amd64-linux-lmp-4" in main.targets and "amd64-linux-lmp-4" not in devel.targets


def test_views_are_served_from_their_files_until_the_repository_changes(repo):
    path = repo.view_file("amd64-linux", ["main"], "targets.json")
    path.write_bytes(b"tampered")
    assert repo.view_file("amd64-linux", ["main"], "targets.json").read_bytes() == b"tampered"
    repo.resign()
    assert json.loads(repo.view_file("amd64-linux", ["main"], "targets.json").read_bytes())["signed"]["_type"] == "targets"


def test_resign_with_a_past_expiry_serves_an_expired_timestamp_until_the_next_resign(repo):
    past = datetime.now(UTC) - timedelta(hours=1)
    repo.resign(past)
    assert _load(repo, "amd64-linux", ["main"], "timestamp.json").signed.is_expired()
    assert _load(repo, "arm64-linux", ["main"], "timestamp.json").signed.is_expired()
    repo.resign()
    assert not _load(repo, "amd64-linux", ["main"], "timestamp.json").signed.is_expired()


def test_a_timestamp_close_to_expiry_is_re_signed_at_a_new_version_when_served(repo):
    path = repo.view_file("amd64-linux", ["main"], "timestamp.json")
    version = repo.version()
    # Time passing, simulated: the view's record says its timestamp expires in an hour.
    meta_path = path.parent / "view.json"
    meta = json.loads(meta_path.read_text())
    meta["timestamp_expires"] = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    meta_path.write_text(json.dumps(meta))
    served = _load(repo, "amd64-linux", ["main"], "timestamp.json").signed
    assert served.version == repo.version() > version
    assert served.expires - datetime.now(UTC) > timedelta(hours=12)


def test_rotate_root_signs_the_new_root_with_old_and_new_keys(repo):
    old = Metadata[Root].from_bytes(repo.trusted_root_json())
    assert repo.rotate_root(("root", "timestamp")) == 2
    new = Metadata[Root].from_bytes(repo.trusted_root_json())
    old.signed.verify_delegate("root", new.signed_bytes, new.signatures)
    new.signed.verify_delegate("root", new.signed_bytes, new.signatures)
    assert new.signed.roles["timestamp"].keyids != old.signed.roles["timestamp"].keyids
    assert new.signed.roles["targets"].keyids == old.signed.roles["targets"].keyids
    timestamp = _load(repo, "amd64-linux", ["main"], "timestamp.json")
    new.signed.verify_delegate("timestamp", timestamp.signed_bytes, timestamp.signatures)
    assert repo.root_json(1) == old.to_bytes() and repo.root_json(3) is None


def test_a_device_switching_tags_gets_a_newer_version_so_its_client_takes_the_new_view(repo):
    main = _load(repo, "amd64-linux", ["main"], "timestamp.json").signed.version
    repo.view_file("amd64-linux", ["main"], "timestamp.json", device="d1")
    assert repo.version() == main  # first look: nothing to bump
    switched = Metadata.from_bytes(repo.view_file("amd64-linux", ["devel"], "timestamp.json", device="d1").read_bytes())
    assert switched.signed.version > main
    again = repo.view_file("amd64-linux", ["devel"], "targets.json", device="d1")
    assert Metadata.from_bytes(again.read_bytes()).signed.version == switched.signed.version


def test_a_home_without_the_keys_its_root_names_is_refused_with_the_way_out(repo) -> None:
    """A home another version of the factory made keeps its keys elsewhere: refuse it at `up`
    rather than answer 500 to every device."""
    for key in repo.home.tuf_keys.glob("*.pem"):
        key.rename(key.with_name("timestamp.pem"))
    with pytest.raises(FactoryHomeError, match="remove the folder, and run `up` again"):
        repo.init()
