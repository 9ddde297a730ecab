"""A device whose storage is small: an update that cannot fit is refused before any fetch, with the
figures; a disk that fills up mid-fetch stops the update with a clear error and loses nothing; once
space is freed, `resume` completes. The device's whole sota dir lives on a size-limited tmpfs."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import BIN, Device, new_device, publish, registry_blob_gets, sample_page
from test_crash import wait_for

from fioup_flow.diskspace import LAYER_RUNTIME_FACTOR, required_bytes
from fioup_flow.factory.devices import DeviceRecords
from fioup_flow.store import SYNC_EVERY

pytestmark = [
    pytest.mark.factory, pytest.mark.docker,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a size-limited tmpfs needs root"),
]

TAG = "small-disk"
HWID = "small-disk-linux"  # a hardware id of its own: these versions never replace the shared releases
FILLER_MB = 24
MIB = 1024 * 1024


def test_room_is_blocks_to_fetch_plus_what_unpacking_takes() -> None:
    # a manifest (not a layer), a layer of known unpacked size, a half-fetched layer of unknown size
    assert required_bytes([(100, 0, None), (5000, 0, 20000), (8192, 4096, -1)], 4096) == (
        4096 + 4096 + 8192 + 20480 + 4096 + LAYER_RUNTIME_FACTOR * 8192)


class SmallDisk:
    """A tmpfs of a given size; `resize` grows or shrinks it in place, as freeing space would."""

    def __init__(self, mount: Path, size_mb: int):
        self.mount = mount
        mount.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)], check=True)

    def resize(self, size_mb: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size_mb}m", str(self.mount)], check=True)

    def fill(self) -> Path:
        """Take every free byte with a ballast file, as another program filling the disk would."""
        ballast = self.mount / "ballast"
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for chunk in (MIB, 4096):  # then the last blocks
                try:
                    while True:
                        os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        return ballast

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.mount)], check=False)


@pytest.fixture(scope="module")
def small_disk_releases(factory) -> None:
    """v1: shellhttpd v1 alone (small); v2: shellhttpd v2 with a FILLER_MB layer that fills the disk."""
    publish(factory.home.root, 1, {"shellhttpd": "shellhttpd/v1"}, TAG, "--hwid", HWID)
    publish(factory.home.root, 2, {"shellhttpd": "shellhttpd/v2"}, TAG, "--hwid", HWID,
            "--layer-mb", f"shellhttpd={FILLER_MB}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "disk", 32)
    try:
        yield disk
    finally:
        disk.unmount()


@pytest.fixture
def device_on_v1(factory, small_disk_releases, engine, small_disk) -> Device:
    """A device on v1 whose sota dir (blob store, checkpoints, compose projects) is on the small disk."""
    device = new_device(factory.info, small_disk.mount / "sota", "--tag", TAG, "--hwid", HWID)
    done = device.run("apply", "1")
    assert done.returncode == 0, done.stderr
    return device


def shellhttpd_container(engine) -> tuple[str, str]:
    (container,) = [c for c in engine.containers.list() if c.labels.get("com.docker.compose.project") == "shellhttpd"]
    return container.id, container.status


def test_an_update_that_cannot_fit_is_refused_with_41_and_the_figures_and_resumes_once_it_fits(
        factory, engine, small_disk, device_on_v1) -> None:
    running = shellhttpd_container(engine)
    done = device_on_v1.run("apply", "2")
    assert done.returncode == 41, done.stderr
    assert "needs" in done.stderr and "MiB are available" in done.stderr
    assert not (device_on_v1.sota_dir / "reset-apps" / "ingest").exists() or not any(
        p.stat().st_size for p in (device_on_v1.sota_dir / "reset-apps" / "ingest").glob("*/data")), \
        "nothing is fetched for an update that cannot fit"
    assert shellhttpd_container(engine) == running and "v1" in sample_page(), "v1 keeps running, untouched"
    records = DeviceRecords(factory.home)
    events = records.events(records.find(device_on_v1.name)["uuid"])
    started = next(e for e in events if e["eventType"]["id"] == "EcuDownloadStarted")
    assert "storage_stat" in started["event"]["details"]
    assert events[-1]["eventType"]["id"] == "EcuDownloadCompleted" and events[-1]["event"]["success"] is False

    small_disk.resize(160)
    resumed = device_on_v1.run("resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "v2" in sample_page()


def test_a_disk_that_fills_mid_fetch_stops_with_41_keeps_the_partial_and_resumes_once_space_is_freed(
        factory, engine, small_disk, device_on_v1, tmp_path: Path) -> None:
    small_disk.resize(160)
    (tmp_path / "rate.toml").write_text('[pacman]\ndownload_rate_limit = "8M"\n')
    device_on_v1.drop_ins.append(tmp_path / "rate.toml")
    ingest = device_on_v1.sota_dir / "reset-apps" / "ingest"
    running = shellhttpd_container(engine)

    cfg_dirs = ",".join(str(p) for p in [device_on_v1.cfg, *device_on_v1.drop_ins])
    process = subprocess.Popen([str(BIN / "fioup-flow"), "-c", cfg_dirs, "apply", "2"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ, FIOUP_FLOW_RETRY_SECONDS="3"))
    wait_for(lambda: any(p.stat().st_size >= SYNC_EVERY for p in ingest.glob("*/data")), 120,
             "the large layer partly fetched")
    ballast = small_disk.fill()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 41, stderr
    error = stderr.strip().splitlines()[-1]
    assert "is full while fetching" in error and "bytes fetched are kept" in error and "resume" in error, stderr
    (partial,) = [p for p in ingest.glob("*/data")]
    kept = partial.stat().st_size
    assert kept >= SYNC_EVERY, "what was fetched before the disk filled up is kept"
    assert shellhttpd_container(engine) == running and "v1" in sample_page(), "v1 keeps running, untouched"
    records = DeviceRecords(factory.home)
    uuid = records.find(device_on_v1.name)["uuid"]
    failed = records.events(uuid)[-1]
    assert failed["eventType"]["id"] == "EcuDownloadCompleted" and failed["event"]["success"] is False, \
        "the gateway hears why the update stopped, though no report could be queued on the full disk"

    at_full = len(registry_blob_gets(factory.home))
    ballast.unlink()
    resumed = device_on_v1.run("resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "v2" in sample_page()
    digest = f"sha256:{partial.parent.name}"
    fetched_after = sum(written for d, written in registry_blob_gets(factory.home)[at_full:] if d == digest)
    assert fetched_after <= FILLER_MB * MIB - kept + MIB, "the download resumes from what was kept"
    ids = [e["id"] for e in records.events(uuid)]
    assert len(ids) == len(set(ids)) and records.events(uuid)[-1]["eventType"]["id"] == "EcuInstallationCompleted"


def test_a_full_disk_while_saving_new_metadata_is_41_not_a_metadata_failure(
        factory, engine, small_disk, device_on_v1) -> None:
    publish(factory.home.root, 3, {"shellhttpd": "shellhttpd/v1"}, TAG, "--hwid", HWID)  # metadata to save
    ballast = small_disk.fill()
    done = device_on_v1.run("check")
    assert done.returncode == 41, done.stderr
    assert "full while saving TUF metadata" in done.stderr
    ballast.unlink()
    assert device_on_v1.run("check").returncode == 0
