"""Updates from an offline bundle (`apply --src-dir`), with the factory's gateway and registries
down, or up and never asked anything.

The bundles are the factory's own (`fioup-flow-factory offline-bundle`), made while the factory is
up; a bad medium is one of them copied and damaged. Judged by the engine (containers, images), the
registries' and the gateway's logs, and what the gateway holds once the device is online again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import BIN, Device, fresh_device, health_window_drop_in, publish, sample_page
from test_crash import committed, kill, partials, start_apply, wait_for
from test_rollback import ROLLED_BACK, node_reached

from fioup_flow.composeapp import AppTreeLoader
from fioup_flow.factory.cli import bring_down, bring_up
from fioup_flow.factory.devices import DeviceRecords
from fioup_flow.factory.tufrepo import CI, TufRepository, new_signer, sign_document
from fioup_flow.store import BlobStore
from fioup_flow.targets import App
from fioup_flow.tuf.flavour import envelope

pytestmark = [pytest.mark.factory, pytest.mark.docker]

HWID = "offline-linux"  # hardware ids and tags of this module's own, so the shared releases stay as they are
TAG = "offline"
OTHER_TAG = "offline-other"
BIG_HWID = "offline-big-linux"
BIG_TAG = "offline-big"
BIG_MB = 48
V1 = {"shellhttpd": "shellhttpd/v1", "pair": "pair/v1"}
V2 = {"shellhttpd": "shellhttpd/v2", "pair": "pair/v1"}
V3 = {"shellhttpd": "shellhttpd/v2", "crashloop": "crashloop/v1"}  # crashes: rolled back
UPDATE_EVENTS = ["UpdateInitStarted", "UpdateInitCompleted", "EcuDownloadStarted", "EcuDownloadCompleted",
                 "EcuInstallationStarted", "EcuInstallationApplied", "EcuInstallationCompleted"]
QUICK_S = 20.0  # an offline update takes about 6 s here; with the gateway asked (60 s budgets), 25 to 35 s


def make_bundle(factory, version: int, out: Path, *extra: str, tag: str = TAG) -> Path:
    done = subprocess.run([str(BIN / "fioup-flow-factory"), "offline-bundle", "--home", str(factory.home.root),
                           "--version", str(version), "--tag", tag, "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def bundles(factory, tmp_path_factory) -> dict[str, Path]:
    """Version 1 (CI and production Targets, tags TAG and OTHER_TAG) and 2 (CI, TAG), and a big
    version 1 of its own, each as an offline bundle; tests damage copies of them, never these."""
    home = factory.home.root
    publish(home, 1, V1, TAG, "--tag", OTHER_TAG, "--hwid", HWID, "--production")
    publish(home, 2, V2, TAG, "--hwid", HWID)
    publish(home, 3, V3, TAG, "--hwid", HWID)
    publish(home, 1, V1, BIG_TAG, "--hwid", BIG_HWID, "--layer-mb", f"shellhttpd={BIG_MB}")
    folder = tmp_path_factory.mktemp("bundles")
    return {
        "v1": make_bundle(factory, 1, folder / "v1"),
        "v2": make_bundle(factory, 2, folder / "v2"),
        "v3": make_bundle(factory, 3, folder / "v3"),
        "other-tag": make_bundle(factory, 1, folder / "other-tag", tag=OTHER_TAG),
        "prod": make_bundle(factory, 1, folder / "prod", "--production"),
        "expired": make_bundle(factory, 1, folder / "expired", "--expires-in-days", "-1"),
        "big": make_bundle(factory, 1, folder / "big", tag=BIG_TAG),
    }


@pytest.fixture
def device(factory, bundles, engine, tmp_path: Path) -> Iterator[Device]:
    with fresh_device(factory, engine, tmp_path / "sota", TAG, HWID) as fresh:
        yield fresh


@pytest.fixture
def big_device(factory, bundles, engine, tmp_path: Path) -> Iterator[Device]:
    """A device of the big release, its copies limited to 8 MB/s (so a kill can meet one midway)."""
    with fresh_device(factory, engine, tmp_path / "sota", BIG_TAG, BIG_HWID) as fresh:
        (tmp_path / "rate.toml").write_text('[pacman]\ndownload_rate_limit = "8M"\n')
        fresh.drop_ins.append(tmp_path / "rate.toml")
        yield fresh


@contextmanager
def factory_down(factory) -> Iterator[None]:
    """The gateway, the registries and the blob storage stopped until the block ends."""
    assert bring_down(factory.home)
    try:
        yield
    finally:
        assert bring_up(factory.home) == factory.info


def copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def offline_apply(device: Device, bundle: Path, *args: str) -> subprocess.CompletedProcess:
    # A long retry budget: an offline update that asked the network anything would wait it out.
    return device.run("apply", "--src-dir", str(bundle), *args, env={"FIOUP_FLOW_RETRY_SECONDS": "60"})


def uuid_of(factory, device: Device) -> str:
    return DeviceRecords(factory.home).find(device.name)["uuid"]


def event_types(factory, device: Device) -> list[str]:
    return [e["eventType"]["id"] for e in DeviceRecords(factory.home).events(uuid_of(factory, device))]


def log_lines(factory, *services: str) -> int:
    return sum(len(factory.home.log_file(s).read_text(errors="replace").splitlines()) for s in services)


def gateway_lines(factory, device: Device) -> list[str]:
    """What the gateway logged of the device's requests."""
    uuid = uuid_of(factory, device)
    return [line for line in factory.home.log_file("factory-server").read_text().splitlines() if uuid in line]


def nothing_installed(engine, device: Device) -> None:
    assert engine.containers.list(all=True) == []
    assert engine.images.list() == []
    assert device.json("status", "--json")["current"] is None


# --- the flow -------------------------------------------------------------------------------
def test_with_the_factory_down_a_device_updates_from_a_bundle_and_reports_once_online(
        factory, device, engine, bundles) -> None:
    with factory_down(factory):
        start = time.monotonic()
        done = offline_apply(device, bundles["v1"])
        took = time.monotonic() - start
        print(f"\nan offline update with the factory down: {took:.1f} s")
        assert done.returncode == 0, done.stderr
        assert took < QUICK_S, f"an offline update took {took:.1f} s: it waited for the network"
        assert "v1" in sample_page()
        assert {c.labels["com.docker.compose.project"] for c in engine.containers.list()} == {"shellhttpd", "pair"}
        status = device.json("status", "--json")
        assert status["current"]["version"] == 1
        assert status["reports"]["pending"] > 0
        assert event_types(factory, device) == [], "nothing reached the gateway"
        done = offline_apply(device, bundles["v2"])
        assert done.returncode == 0, done.stderr
        assert "v2" in sample_page()
    resumed = device.run("resume")
    assert resumed.returncode == 0, resumed.stderr
    sent = DeviceRecords(factory.home).events(uuid_of(factory, device))
    # both bundles carry the same metadata: it changed once, with the first
    assert [e["eventType"]["id"] for e in sent] == ["MetadataUpdateCompleted", *UPDATE_EVENTS, *UPDATE_EVENTS]
    assert len({e["id"] for e in sent}) == len(sent), "each event once"
    assert [e["event"]["version"] for e in sent if e["eventType"]["id"] == "EcuInstallationCompleted"] == ["1", "2"]
    assert device.json("status", "--json")["reports"]["pending"] == 0


def test_an_offline_update_asks_nothing_of_the_gateway_nor_the_registries_while_they_are_up(
        factory, device, bundles) -> None:
    before = log_lines(factory, "registry", "thirdparty"), DeviceRecords(factory.home).get(uuid_of(factory, device))
    seen = gateway_lines(factory, device)
    done = offline_apply(device, bundles["v1"])
    assert done.returncode == 0, done.stderr
    assert "v1" in sample_page()
    assert log_lines(factory, "registry", "thirdparty") == before[0], "a registry was asked"
    record = DeviceRecords(factory.home).get(before[1]["uuid"])
    assert record["last_seen"] == before[1]["last_seen"], "the gateway was asked"
    assert gateway_lines(factory, device) == seen


def test_a_rollback_of_an_offline_update_resumed_after_a_kill_stays_offline(
        factory, device, bundles, tmp_path: Path) -> None:
    device.drop_ins.append(health_window_drop_in(tmp_path, 3))  # long enough to catch the crash loop
    assert offline_apply(device, bundles["v1"]).returncode == 0
    seen, registries = gateway_lines(factory, device), log_lines(factory, "registry", "thirdparty")
    process = start_apply(device, "--src-dir", str(bundles["v3"]))
    try:
        wait_for(lambda: node_reached(device, "rollback", "report:UpdateInitStarted", "done"), 180, "the rollback")
    finally:
        kill(process)
    done = device.run("resume", env={"FIOUP_FLOW_RETRY_SECONDS": "60"})
    assert done.returncode == ROLLED_BACK, done.stderr
    assert "v1" in sample_page()
    assert gateway_lines(factory, device) == seen, "the gateway was asked"
    assert log_lines(factory, "registry", "thirdparty") == registries, "a registry was asked"


def test_a_bundle_older_than_the_metadata_the_device_holds_installs_with_the_device_own(
        factory, device, bundles) -> None:
    TufRepository(factory.home).resign()  # the gateway's metadata is newer than the bundles' now
    checked = device.run("check")
    assert checked.returncode == 0, checked.stderr
    held = (device.sota_dir / "tuf" / "timestamp.json").read_bytes()
    done = offline_apply(device, bundles["v1"])
    assert done.returncode == 0, done.stderr
    assert "v1" in sample_page()
    assert (device.sota_dir / "tuf" / "timestamp.json").read_bytes() == held, "the device's metadata went back"


# --- power cuts and a bundle that goes --------------------------------------------------------
def kill_mid_copy(device: Device, bundle: Path) -> None:
    process = start_apply(device, "--src-dir", str(bundle))
    try:
        wait_for(lambda: max(partials(device).values(), default=0) > 8 * 1024 * 1024, 120, "a big blob half copied")
    finally:
        kill(process)


def test_a_power_cut_mid_copy_resumes_from_the_bundle_and_copies_nothing_twice(
        factory, big_device, bundles) -> None:
    with factory_down(factory):
        kill_mid_copy(big_device, bundles["big"])
        done = {digest: (p.stat().st_ino, p.stat().st_mtime_ns) for digest in committed(big_device)
                for p in [big_device.sota_dir / "reset-apps" / "blobs" / "sha256" / digest.split(":")[1]]}
        partial = {digest: (big_device.sota_dir / "reset-apps" / "ingest" / digest.split(":")[1] / "data").stat().st_ino
                   for digest in partials(big_device)}
        resumed = big_device.run("resume")
        assert resumed.returncode == 0, resumed.stderr
        assert "v1" in sample_page()
    blobs = big_device.sota_dir / "reset-apps" / "blobs" / "sha256"
    for digest, (inode, mtime) in done.items():
        path = blobs / digest.split(":")[1]
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == (inode, mtime), f"{digest} was copied again"
    for digest, inode in partial.items():
        assert (blobs / digest.split(":")[1]).stat().st_ino == inode, f"{digest} started over instead of resuming"


def test_a_bundle_gone_mid_update_is_named_then_the_update_goes_on_once_it_is_back(
        factory, big_device, bundles, engine, tmp_path: Path) -> None:
    bundle = copy(bundles["big"], tmp_path)
    kill_mid_copy(big_device, bundle)
    kept = partials(big_device)
    away = bundle.rename(tmp_path / "unplugged")
    done = big_device.run("resume")
    assert done.returncode == 80, done.stderr
    assert f"the offline bundle at {bundle} is gone: insert it again" in done.stderr
    assert partials(big_device) == kept, "nothing is lost"
    assert engine.containers.list(all=True) == []
    assert big_device.json("status", "--json")["in_progress"] is not None
    away.rename(bundle)
    resumed = big_device.run("resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "v1" in sample_page()


# --- bad media ------------------------------------------------------------------------------
def blob_files(bundle: Path) -> list[Path]:
    """The bundle's blobs, largest first (the largest is a layer: read only when fetched)."""
    return sorted((bundle / "apps" / "blobs" / "sha256").iterdir(), key=lambda p: -p.stat().st_size)


def resign_bundle_meta(bundle: Path, change: Callable[[dict], None], signers=None, repo=None) -> None:
    """bundle-targets.json with `change` made to its signed part, signed by `signers` (default: the
    factory's Targets key, as a bundle made by the factory is)."""
    path = bundle / "tuf" / "bundle-targets.json"
    signed, _, _ = envelope(path.read_bytes())
    change(signed)
    path.write_bytes(sign_document(signed, signers if signers is not None else repo.signers(repo.latest_root(CI),
                                                                                          "targets")))


def tamper_bundle_meta(bundle: Path, repo: TufRepository) -> None:
    path = bundle / "tuf" / "bundle-targets.json"
    document = json.loads(path.read_bytes())
    document["signed"]["x-fio-offline-bundle"]["targets"].append(f"{HWID}-lmp-2")
    path.write_text(json.dumps(document))


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


BAD_MEDIA: dict[str, tuple[str, Callable[[Path, TufRepository], None], int, str]] = {
    "a missing blob": ("v1", lambda b, r: blob_files(b)[0].unlink(), 88, "lacks 1 blob(s) of the update"),
    "a missing app": ("v1", lambda b, r: shutil.rmtree(b / "apps" / "apps" / "pair"), 88, "lacks app(s)"),
    "no tuf/timestamp.json": ("v1", lambda b, r: (b / "tuf" / "timestamp.json").unlink(), 84,
                              "has no timestamp.json"),
    "no bundle-targets.json": ("v1", lambda b, r: (b / "tuf" / "bundle-targets.json").unlink(), 84,
                               "has no tuf/bundle-targets.json"),
    "no tuf/ at all": ("v1", lambda b, r: shutil.rmtree(b / "tuf"), 84, "is not an offline bundle"),
    "bundle-targets.json tampered": ("v1", tamper_bundle_meta, 85, "a signature that does not verify"),
    "bundle-targets.json signed by a wrong key": (
        "v1", lambda b, r: resign_bundle_meta(b, lambda s: None, [new_signer()]), 85,
        "signed with a key the Targets role does not name"),
    "bundle-targets.json not signed": ("v1", lambda b, r: resign_bundle_meta(b, lambda s: None, []), 85,
                                       "0 valid signature(s)"),
    "an expired bundle": ("expired", lambda b, r: None, 85, "the offline bundle expired at"),
    "a bundle for another tag": ("other-tag", lambda b, r: None, 85, f"is for tag '{OTHER_TAG}'"),
    "a production bundle on a CI device": ("prod", lambda b, r: None, 85, "of type 'prod', this is a CI device"),
    "a bundle listing a Target not in targets.json": (
        "v1", lambda b, r: resign_bundle_meta(b, lambda s: s["x-fio-offline-bundle"]["targets"].append(
            f"{HWID}-lmp-9"), repo=r), 85, f"lists {HWID}-lmp-9, which the verified targets"),
    "tampered TUF targets.json": ("v1", lambda b, r: flip_a_byte(b / "tuf" / "targets.json"), 20,
                                  "TUF metadata update failed"),
}


@pytest.mark.parametrize("case", sorted(BAD_MEDIA))
def test_bad_media_is_refused_with_its_exit_code_and_nothing_installed(
        case: str, factory, device, bundles, engine, tmp_path: Path) -> None:
    source, damage, exit_code, message = BAD_MEDIA[case]
    bundle = copy(bundles[source], tmp_path)
    damage(bundle, TufRepository(factory.home))
    done = offline_apply(device, bundle)
    assert done.returncode == exit_code, done.stderr
    assert message in done.stderr
    nothing_installed(engine, device)
    assert device.json("status", "--json")["in_progress"] is None, "no plan was frozen"


def image_config(bundle: Path, app: str) -> Path:
    """The bundle's file of the config of `app`'s image: a blob of that app alone, read only when fetched."""
    apps = bundle / "apps"
    uri = next(apps.glob(f"apps/{app}/*/uri")).read_text()
    tree = AppTreeLoader(BlobStore(apps), registry=None).load(App(app, uri))
    return apps / "blobs" / "sha256" / tree.images()[0].config.digest.split(":")[1]


def test_a_blob_that_does_not_verify_installs_nothing_marks_nothing_bad_and_the_update_goes_on_from_a_good_copy(
        factory, device, bundles, engine, tmp_path: Path) -> None:
    bundle = copy(bundles["v1"], tmp_path)
    damaged = image_config(bundle, "pair")  # shellhttpd's blobs all verify, and must not install either
    flip_a_byte(damaged)
    done = offline_apply(device, bundle)
    assert done.returncode == 89, done.stderr
    assert "does not match its digest" in done.stderr
    assert f"read from {damaged} (a damaged offline bundle: write it again" in done.stderr
    nothing_installed(engine, device)
    status = device.json("status", "--json")
    assert status["bad_targets"] == [], "the medium is damaged, not the Target"
    assert status["in_progress"] is not None
    shutil.copyfile(bundles["v1"] / "apps" / "blobs" / "sha256" / damaged.name, damaged)
    resumed = device.run("resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "v1" in sample_page()
