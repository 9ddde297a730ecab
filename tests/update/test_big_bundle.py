"""An app whose bundle is larger than 64 MiB is planned, fetched and installed like any other.

composeapp allows a bundle up to 1 GiB; fioup-flow used to refuse any over 64 MiB, and read the
whole of one into memory (twice: gzip and tar) on every walk. The app here is the sample
shellhttpd with one more file of incompressible bytes beside its compose file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support import BIN, clean_engine, new_device, sample_page

from fioup_flow.factory.publish import sample_path

pytestmark = [pytest.mark.factory, pytest.mark.docker]

HWID = "big-bundle-linux"
TAG = "big-bundle"
BIG_MB = 72
MIB = 1024 * 1024


def test_an_app_with_a_bundle_over_64_mib_installs_and_runs(factory, engine, tmp_path: Path) -> None:
    app = tmp_path / "shellhttpd"
    shutil.copytree(sample_path("shellhttpd/v1"), app)
    (app / "data").mkdir()
    with open(app / "data/big.bin", "wb") as f:
        for _ in range(BIG_MB):
            f.write(os.urandom(MIB))
    done = subprocess.run([str(BIN / "fioup-flow-factory"), "publish", "--home", str(factory.home.root),
                           "--version", "1", "--app", f"shellhttpd={app}", "--tag", TAG, "--hwid", HWID],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    clean_engine(engine)
    device = new_device(factory.info, tmp_path / "sota", "--tag", TAG, "--hwid", HWID)
    try:
        applied = device.run("apply", "1")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        installed = device.sota_dir / "compose-apps/shellhttpd/data/big.bin"
        assert installed.read_bytes() == (app / "data/big.bin").read_bytes()
        assert "v1" in sample_page()
        assert device.json("status", "--json")["current"]["version"] == 1
    finally:
        clean_engine(engine)
