"""An update that does not fit is refused before any fetch, with the figures, and goes on once it fits."""

from __future__ import annotations

import os

import pytest

from fioup_flow.diskspace import LAYER_RUNTIME_FACTOR, required_bytes
from fioup_flow.factory.devices import DeviceRecords

pytestmark = [pytest.mark.factory, pytest.mark.docker]


def test_room_is_blocks_to_fetch_plus_what_unpacking_takes() -> None:
    # a manifest (not a layer), a layer of known unpacked size, a half-fetched layer of unknown size
    assert required_bytes([(100, 0, None), (5000, 0, 20000), (8192, 4096, -1)], 4096) == (
        4096 + 4096 + 8192 + 20480 + 4096 + LAYER_RUNTIME_FACTOR * 8192)


def test_an_update_that_does_not_fit_is_refused_with_41_and_resumes_once_it_fits(device, engine, factory) -> None:
    st = os.statvfs(device.sota_dir)
    if st.f_bavail / st.f_blocks > 0.75:
        pytest.skip("this disk is too empty for a 20% watermark to leave no room")
    conf_d = device.sota_dir / "conf.d"
    conf_d.mkdir()
    (conf_d / "z-90-watermark.toml").write_text("[pacman]\nstorage_watermark = 20\n")
    device.drop_ins.append(conf_d)
    done = device.run("apply", "1")
    assert done.returncode == 41, done.stderr
    assert "needs" in done.stderr and "available" in done.stderr
    assert not (device.sota_dir / "reset-apps" / "blobs").exists() or not any(
        p.stat().st_size > 100_000 for p in (device.sota_dir / "reset-apps" / "blobs" / "sha256").iterdir())
    assert engine.containers.list() == []
    records = DeviceRecords(factory.home)
    events = records.events(records.find(device.name)["uuid"])
    started = next(e for e in events if e["eventType"]["id"] == "EcuDownloadStarted")
    assert "storage_stat" in started["event"]["details"]
    failed = events[-1]
    assert failed["eventType"]["id"] == "EcuDownloadCompleted" and failed["event"]["success"] is False

    (conf_d / "z-90-watermark.toml").unlink()
    resumed = device.run("resume")
    assert resumed.returncode == 0, resumed.stderr
    assert {c.labels["com.docker.compose.project"] for c in engine.containers.list()} == {"shellhttpd", "pair"}
