"""The TUF repositories on disk: the FoundriesFactory flavour, CI and production chains, views per
tag, versions that only grow, signatures the device's own verifier accepts.

These read the files the gateway serves; test_core_server.py fetches them over mutual TLS.
"""

from __future__ import annotations

import hashlib
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from tuf.api.exceptions import ExpiredMetadataError
from tuf.api.metadata import Root, Targets, Timestamp

from fioup_flow.factory.home import FactoryHome, FactoryHomeError
from fioup_flow.factory.tufrepo import CI, PRODUCTION, TufRepository
from fioup_flow.tuf.flavour import canonical_bytes, load
from fioup_flow.tuf.trusted_set import TrustedSet
from fioup_flow.tuf.updater import Updater


def target(version: int, hwid: str, tags: list[str]) -> dict:
    custom = {"version": str(version), "hardwareIds": [hwid], "tags": tags, "name": f"{hwid}-lmp",
              "docker_compose_apps": {}}
    return {f"{hwid}-lmp-{version}": {"length": 0, "hashes": {"sha256": "ab" * 32}, "custom": custom}}


@pytest.fixture()
def repo(tmp_path) -> TufRepository:
    repo = TufRepository(FactoryHome(tmp_path / "home"))
    repo.init()
    repo.add_targets(target(1, "amd64-linux", ["main"]) | target(1, "arm64-linux", ["main"])
                     | target(2, "amd64-linux", ["devel"]) | target(3, "amd64-linux", ["main", "devel"]))
    repo.add_targets(target(1, "amd64-linux", ["main"]), production=True)
    return repo


def served(repo: TufRepository, repository: str, tags: list[str], name: str) -> dict:
    return json.loads(repo.view_file(repository, tags, name).read_bytes())


def device_refresh(repo: TufRepository, store: Path, repository: str = CI,
                   tags: tuple[str, ...] = ("main",)) -> Targets:
    """What a device of `repository` following `tags` trusts after a refresh (the device's own
    Updater, reading the repository's files in place of the gateway)."""
    def fetch(name: str, _max_length: int) -> bytes | None:
        if name.endswith(".root.json"):
            return repo.root_json(repository, int(name.split(".")[0]))
        return repo.view_file(repository, tags, name).read_bytes()

    roots = [repo.root_json(repository, v) for v in repo.root_versions(repository)]
    return Updater(store, fetch, lambda: roots[:1]).refresh()


def test_init_makes_a_ci_and_a_production_chain_sharing_their_first_two_roots(repo) -> None:
    assert repo.root_versions(CI) == [1, 2] and repo.root_versions(PRODUCTION) == [1, 2, 3]
    assert repo.root_json(CI, 1) == repo.root_json(PRODUCTION, 1)
    assert repo.root_json(CI, 2) == repo.root_json(PRODUCTION, 2)
    ci, prod = repo.latest_root(CI), repo.latest_root(PRODUCTION)
    assert ci["roles"]["root"] == prod["roles"]["root"] and ci["roles"]["timestamp"] == prod["roles"]["timestamp"]
    assert ci["roles"]["targets"] != prod["roles"]["targets"], "production Targets have a key of their own"
    keys = list(repo.home.tuf_keys.glob("*.pem"))
    assert len(keys) == 6 and all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    before = {p: p.read_bytes() for p in repo.home.tuf.rglob("*.root.json")}
    repo.init()
    assert {p: p.read_bytes() for p in repo.home.tuf.rglob("*.root.json")} == before


def test_roots_are_in_the_flavour_rsa_first_then_ed25519_with_fioctl_s_key_ids(repo) -> None:
    root1 = json.loads(repo.root_json(CI, 1))
    assert set(root1["signed"]) == {"_type", "consistent_snapshot", "expires", "keys", "roles", "version"}
    assert root1["signed"]["_type"] == "Root" and root1["signed"]["consistent_snapshot"] is False
    (root_keyid,) = root1["signed"]["roles"]["root"]["keyids"]
    root_key = root1["signed"]["keys"][root_keyid]
    assert root_key["keytype"] == "RSA" and root_key["keyval"]["public"].startswith("-----BEGIN PUBLIC KEY-----\n")
    der = load_pem_public_key(root_key["keyval"]["public"].encode()).public_bytes(Encoding.DER,
                                                                                  PublicFormat.SubjectPublicKeyInfo)
    assert root_keyid == hashlib.sha256(der).hexdigest()
    assert [s["method"] for s in root1["signatures"]] == ["rsassa-pss-sha256"]
    for keyid, key in root1["signed"]["keys"].items():
        assert set(key) == {"keytype", "keyval"} and set(key["keyval"]) == {"public"}
        if key["keytype"] == "ED25519":
            assert len(key["keyval"]["public"]) == 64 and keyid == hashlib.sha256(
                bytes.fromhex("302a300506032b6570032100") + bytes.fromhex(key["keyval"]["public"])).hexdigest()
    root2 = json.loads(repo.root_json(CI, 2))
    assert sorted(s["method"] for s in root2["signatures"]) == ["ed25519", "rsassa-pss-sha256"]
    assert "x-changelog" in root2["signed"], "roots after the first say why they changed"


def test_every_served_file_is_its_own_canonical_form_so_the_bytes_served_are_the_bytes_hashed(repo) -> None:
    for name in ("timestamp.json", "snapshot.json", "targets.json"):
        raw = repo.view_file(CI, ["main"], name).read_bytes()
        assert raw == canonical_bytes(json.loads(raw))
        assert "spec_version" not in json.loads(raw)["signed"]
    for raw in (repo.root_json(CI, 1), repo.root_json(PRODUCTION, 3)):
        assert raw == canonical_bytes(json.loads(raw))
    assert b"\\n" in repo.root_json(CI, 1) and b"\n" not in repo.root_json(CI, 1), "a PEM's newlines escaped"
    snapshot = served(repo, CI, ["main"], "snapshot.json")["signed"]
    targets = repo.view_file(CI, ["main"], "targets.json").read_bytes()
    assert snapshot["_type"] == "Snapshot" and snapshot["meta"]["targets.json"] == {
        "hashes": {"sha256": hashlib.sha256(targets).hexdigest()}, "length": len(targets), "version": repo.version()}


def test_a_view_lists_every_target_of_its_tags_whatever_the_hardware_id(repo) -> None:
    assert set(served(repo, CI, ["main"], "targets.json")["signed"]["targets"]) == {
        "amd64-linux-lmp-1", "arm64-linux-lmp-1", "amd64-linux-lmp-3"}
    assert set(served(repo, CI, ["devel"], "targets.json")["signed"]["targets"]) == {
        "amd64-linux-lmp-2", "amd64-linux-lmp-3"}
    assert served(repo, CI, ["nothing"], "targets.json")["signed"]["targets"] == {}
    assert set(served(repo, PRODUCTION, ["main"], "targets.json")["signed"]["targets"]) == {"amd64-linux-lmp-1"}


def test_the_device_s_verifier_accepts_both_repositories_from_their_first_root(repo, tmp_path) -> None:
    ci = device_refresh(repo, tmp_path / "ci")
    prod = device_refresh(repo, tmp_path / "prod", PRODUCTION)
    assert set(ci.targets) == {"amd64-linux-lmp-1", "arm64-linux-lmp-1", "amd64-linux-lmp-3"}
    assert set(prod.targets) == {"amd64-linux-lmp-1"}
    assert load(Root, (tmp_path / "prod" / "root.json").read_bytes()).signed.version == 3


def test_the_version_only_grows_and_a_tag_change_meets_a_timestamp_of_the_same_version(repo) -> None:
    main = served(repo, CI, ["main"], "timestamp.json")
    repo.add_targets(target(4, "amd64-linux", ["main"]))
    devel = served(repo, CI, ["devel"], "timestamp.json")
    main_again = served(repo, CI, ["main"], "timestamp.json")
    assert devel["signed"]["version"] == main_again["signed"]["version"] > main["signed"]["version"]
    assert devel["signed"]["meta"] != main_again["signed"]["meta"], "another snapshot, same version"


def test_a_device_changing_tags_takes_the_same_version_timestamp_naming_another_snapshot(repo, tmp_path) -> None:
    assert "amd64-linux-lmp-2" not in device_refresh(repo, tmp_path / "d", tags=("main",)).targets
    assert "amd64-linux-lmp-2" in device_refresh(repo, tmp_path / "d", tags=("devel",)).targets
    assert "amd64-linux-lmp-1" in device_refresh(repo, tmp_path / "d", tags=("main",)).targets


def test_views_are_served_from_their_files_until_the_repository_changes(repo) -> None:
    path = repo.view_file(CI, ["main"], "targets.json")
    path.write_bytes(b"tampered")
    assert repo.view_file(CI, ["main"], "targets.json").read_bytes() == b"tampered"
    repo.resign()
    assert served(repo, CI, ["main"], "targets.json")["signed"]["_type"] == "Targets"


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets"])
def test_resign_with_a_past_expiry_serves_that_role_expired_until_the_next_change(repo, role, tmp_path) -> None:
    repo.resign({role: datetime.now(UTC) - timedelta(hours=1)})
    for repository in (CI, PRODUCTION):
        assert served(repo, repository, ["main"], f"{role}.json")["signed"]["expires"] < datetime.now(UTC).isoformat()
    with pytest.raises(ExpiredMetadataError):
        device_refresh(repo, tmp_path / "d")
    repo.resign()
    device_refresh(repo, tmp_path / "d")


def test_a_timestamp_close_to_expiry_is_re_signed_at_a_new_version_when_served(repo) -> None:
    path = repo.view_file(CI, ["main"], "timestamp.json")
    version = repo.version()
    meta_path = path.parent / "view.json"  # time passing: the view's timestamp expires in an hour
    meta = json.loads(meta_path.read_text())
    meta["timestamp_expires"] = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta_path.write_text(json.dumps(meta))
    timestamp = load(Timestamp, repo.view_file(CI, ["main"], "timestamp.json").read_bytes()).signed
    assert timestamp.version == repo.version() > version
    assert timestamp.expires - datetime.now(UTC) > timedelta(hours=12)


def test_rotate_root_signs_both_chains_with_old_and_new_keys_and_the_threshold_asked(repo, tmp_path) -> None:
    device_refresh(repo, tmp_path / "d")
    old = {r: repo.latest_root(r) for r in (CI, PRODUCTION)}
    assert repo.rotate_root(("root", "targets"), threshold=2) == {CI: 3, PRODUCTION: 4}
    for repository in (CI, PRODUCTION):
        new = json.loads(repo.root_json(repository, repo.root_versions(repository)[-1]))
        assert len(new["signatures"]) == 3, "one old root key and the two new ones"
        assert new["signed"]["roles"]["targets"]["threshold"] == 2
        targets_keys = set(new["signed"]["roles"]["targets"]["keyids"])
        assert targets_keys.isdisjoint(old[repository]["roles"]["targets"]["keyids"])
        assert new["signed"]["roles"]["snapshot"] == old[repository]["roles"]["snapshot"]
        assert set(new["signed"]["keys"]) == {k for r in new["signed"]["roles"].values() for k in r["keyids"]}
    assert len(served(repo, CI, ["main"], "targets.json")["signatures"]) == 2
    trusted = TrustedSet(repo.root_json(CI, 2))
    trusted.update_root(repo.root_json(CI, 3))  # old keys and new keys both sign it
    assert "amd64-linux-lmp-1" in device_refresh(repo, tmp_path / "d").targets


def test_roots_export_as_an_image_ships_them(repo, tmp_path) -> None:
    assert repo.export_roots(tmp_path / "tuf") == {CI: [1, 2], PRODUCTION: [1, 2, 3]}
    assert (tmp_path / "tuf" / "prod" / "3.root.json").read_bytes() == repo.root_json(PRODUCTION, 3)
    assert sorted(p.name for p in (tmp_path / "tuf" / "ci").iterdir()) == ["1.root.json", "2.root.json"]


def test_a_home_without_the_keys_its_root_names_is_refused_with_the_way_out(repo) -> None:
    """A home another version of the factory made keeps its keys elsewhere: refuse it at `up`
    rather than answer 500 to every device."""
    for key in repo.home.tuf_keys.glob("*.pem"):
        key.rename(key.with_name("timestamp.pem"))
    with pytest.raises(FactoryHomeError, match="remove the folder, and run `up` again"):
        repo.init()


def test_a_home_with_the_old_single_chain_is_refused_with_the_way_out(tmp_path) -> None:
    home = FactoryHome(tmp_path)
    (home.tuf / "root").mkdir(parents=True)
    with pytest.raises(FactoryHomeError, match="remove the folder"):
        TufRepository(home).init()
