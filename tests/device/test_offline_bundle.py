"""Offline bundles: what `fioup-flow-factory offline-bundle` writes, and the device's checks of a
bundle's `bundle-targets.json` (aktualizr-lite's rules, `src/api.cc`), one refusal per rule.

The bundle is judged with the device's own readers (TUF through `TrustedSet`, blobs by their
sha256), not with what the factory says of it.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import BIN, publish
from tuf.api.metadata import Root, Targets

from fioup_flow.composeapp import AppTreeLoader
from fioup_flow.errors import BundleMetadataError
from fioup_flow.factory.tufrepo import CI, PRODUCTION, TufRepository, new_signer, next_root, sign_document, stamp
from fioup_flow.store import BlobStore
from fioup_flow.targets import App
from fioup_flow.tuf.bundle import BundleMeta, check_for_device, check_targets, verify_bundle_meta
from fioup_flow.tuf.flavour import load
from fioup_flow.tuf.trusted_set import TrustedSet

HWID = "bundle-linux"
TAG = "bundle"
APPS = {"shellhttpd": "shellhttpd/v1", "pair": "pair/v1"}
NOW = datetime.now(UTC)


def offline_bundle(factory, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "fioup-flow-factory"), "offline-bundle", "--home", str(factory.home.root),
                           "--out", str(out), *extra], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def release(factory) -> dict:
    """Version 1 of this module's own hardware id and tag, CI and production."""
    return publish(factory.home.root, 1, APPS, TAG, "--hwid", HWID, "--production")


@pytest.fixture(scope="module")
def bundle(factory, release, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "usb"
    done = offline_bundle(factory, out, "--version", "1", "--tag", TAG)
    assert done.returncode == 0, done.stderr
    return out


def trusted_through(tuf: Path, shipped: bytes) -> TrustedSet:
    """The bundle's metadata as a device whose image ships `shipped` (root 1) verifies it."""
    trusted = TrustedSet(shipped)
    version = 2
    while (tuf / f"{version}.root.json").exists():
        trusted.update_root((tuf / f"{version}.root.json").read_bytes())
        version += 1
    trusted.update_timestamp((tuf / "timestamp.json").read_bytes())
    trusted.update_snapshot((tuf / "snapshot.json").read_bytes())
    trusted.update_targets((tuf / "targets.json").read_bytes())
    return trusted


# --- what the factory writes --------------------------------------------------------------------
def test_the_bundle_metadata_verifies_from_a_ci_device_image_roots_and_names_the_version_targets(
        factory, release, bundle) -> None:
    repo = TufRepository(factory.home)
    tuf = bundle / "tuf"
    assert sorted(p.name for p in tuf.glob("*.root.json")) == [f"{v}.root.json" for v in repo.root_versions(CI)]
    trusted = trusted_through(tuf, repo.root_json(CI, 1))
    assert set(release) <= set(trusted.targets.targets)
    assert trusted.timestamp.expires > NOW + timedelta(days=29), "it lasts as long as the bundle, not a day"
    meta = verify_bundle_meta((tuf / "bundle-targets.json").read_bytes(), trusted.root, NOW)
    assert meta.type == "ci" and meta.tag == TAG
    assert sorted(meta.targets) == sorted(release)
    assert NOW + timedelta(days=29) < meta.expires < NOW + timedelta(days=31)
    check_targets(meta, trusted.targets)


def test_the_bundle_apps_are_a_store_holding_every_blob_of_every_app_verified(release, bundle) -> None:
    apps = bundle / "apps"
    blobs = sorted((apps / "blobs" / "sha256").iterdir())
    assert blobs and all(hashlib.sha256(p.read_bytes()).hexdigest() == p.name for p in blobs)
    uris = {app["uri"] for info in release.values() for app in info["custom"]["docker_compose_apps"].values()}
    listed = {p.read_text() for p in apps.glob("apps/*/*/uri")}
    assert listed == uris
    for uri_file in apps.glob("apps/*/*/uri"):
        assert uri_file.parent.name == uri_file.read_text().rsplit(":", 1)[1]
        assert uri_file.parent.parent.name == uri_file.read_text().rsplit("@", 1)[0].rsplit("/", 1)[1]
    store = BlobStore(apps)
    for uri in uris:
        tree = AppTreeLoader(store, registry=None).load(App(uri.rsplit("@", 1)[0].rsplit("/", 1)[1], uri))
        assert all(store.verify(blob.digest, blob.size) for blob in tree.blobs())
    assert not (apps / "ingest").exists()


def test_a_production_bundle_is_signed_by_the_production_targets_key(factory, release, tmp_path: Path) -> None:
    done = offline_bundle(factory, tmp_path / "usb", "--version", "1", "--tag", TAG, "--production")
    assert done.returncode == 0, done.stderr
    repo, data = TufRepository(factory.home), (tmp_path / "usb" / "tuf" / "bundle-targets.json").read_bytes()
    prod_root = load(Root, repo.root_json(PRODUCTION, repo.root_versions(PRODUCTION)[-1])).signed
    assert verify_bundle_meta(data, prod_root, NOW).type == "prod"
    ci_root = load(Root, repo.root_json(CI, repo.root_versions(CI)[-1])).signed
    with pytest.raises(BundleMetadataError, match="a key the Targets role does not name"):
        verify_bundle_meta(data, ci_root, NOW)


def test_the_factory_refuses_a_folder_holding_a_bundle_and_a_version_without_targets(
        factory, bundle, tmp_path: Path) -> None:
    again = offline_bundle(factory, bundle, "--version", "1", "--tag", TAG)
    assert again.returncode == 2 and "holds an offline bundle already" in again.stderr
    none = offline_bundle(factory, tmp_path / "usb", "--version", "99", "--tag", TAG)
    assert none.returncode == 2 and "no Target of version 99" in none.stderr
    assert not (tmp_path / "usb" / "tuf").exists()


# --- the device's checks of bundle-targets.json, one per rule -----------------------------------
@pytest.fixture(scope="module")
def keys():
    """A root whose Targets role has two keys and a threshold of 2, and the signers."""
    root_key, targets = new_signer(), [new_signer(), new_signer()]
    base = {"_type": "Root", "consistent_snapshot": False, "keys": {}, "roles": {}, "version": 0}
    signed = next_root(base, {"root": [root_key.public_key], "targets": [s.public_key for s in targets],
                              "snapshot": [root_key.public_key], "timestamp": [root_key.public_key]}, None, None)
    return load(Root, sign_document(signed, [root_key])).signed, targets


def bundle_targets(signers, expires: datetime = NOW + timedelta(days=1), **fields) -> bytes:
    bundle = {"type": "ci", "tag": TAG, "targets": [f"{HWID}-lmp-1"], **fields}
    return sign_document({"_type": "Targets", "expires": stamp(expires), "version": 3,
                          "x-fio-offline-bundle": bundle}, signers)


def test_a_bundle_signed_by_the_targets_role_threshold_is_read(keys) -> None:
    root, targets = keys
    meta = verify_bundle_meta(bundle_targets(targets), root, NOW)
    assert meta == BundleMeta("ci", TAG, (f"{HWID}-lmp-1",), meta.expires)


@pytest.mark.parametrize("make, reason", [
    (lambda t: bundle_targets(t[:1]), "1 valid signature(s) of the Targets role's keys; its threshold is 2"),
    (lambda t: bundle_targets(t + [new_signer()]), "signed with a key the Targets role does not name"),
    (lambda t: bundle_targets(t).replace(b'"tag":"bundle"', b'"tag":"bundlf"'), "a signature that does not verify"),
    (lambda t: bundle_targets(t, NOW - timedelta(seconds=1)), "the offline bundle expired at"),
    (lambda t: bundle_targets(t, type="staging"), "type must be one of ci, prod"),
    (lambda t: bundle_targets(t, targets=[]), "targets must list Target names"),
    (lambda t: json.dumps({"signed": {}, "signatures": []}).encode(), "must be a JSON object"),
    (lambda t: b"not json", "not JSON"),
])
def test_a_bundle_breaking_a_rule_is_refused(keys, make, reason) -> None:
    root, targets = keys
    with pytest.raises(BundleMetadataError, match=re.escape(reason)):
        verify_bundle_meta(make(targets), root, NOW)


def test_a_bundle_is_only_for_its_type_of_device_and_its_tag() -> None:
    meta = BundleMeta("prod", TAG, (), NOW)
    check_for_device(meta, production=True, tags=("other", TAG))
    check_for_device(meta, production=True, tags=())  # a device without tags: aktualizr-lite checks none
    with pytest.raises(BundleMetadataError, match="of type 'prod', this is a CI device"):
        check_for_device(meta, production=False, tags=(TAG,))
    with pytest.raises(BundleMetadataError, match="is for tag 'bundle', this device follows main"):
        check_for_device(meta, production=True, tags=("main",))


def test_every_target_a_bundle_lists_must_be_in_the_verified_targets() -> None:
    targets = Targets(version=7, targets={})
    with pytest.raises(BundleMetadataError, match="lists x-lmp-1, which the verified targets metadata \\(version 7\\)"):
        check_targets(BundleMeta("ci", TAG, ("x-lmp-1",), NOW), targets)
