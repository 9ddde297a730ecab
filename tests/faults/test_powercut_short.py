"""Real updates survive power cuts: a few cuts of scripts/powercut's harness, so CI keeps it.

Each cut kills a real `fioup-flow apply` (sota dir on the power-cut filesystem), drops every
unsynced write, kills the test's own Docker engine with every container, boots (the engine,
then `resume`) and checks the harness's invariants: on the target with every
app running, every blob intact, each event once and in order, no verified blob fetched again,
no app stopped after boot longer than an uninterrupted run stops it. `scripts/powercut --cuts N`
runs many more.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "lib"))
import powercut  # noqa: E402
from faults.needs import FUSE  # noqa: E402
from support import clean_engine  # noqa: E402

pytestmark = [*FUSE, pytest.mark.factory, pytest.mark.docker, pytest.mark.timeout(400)]

# (seed, scenario, mode, at): at < 0 draws the moment from the seed over the uninterrupted run;
# in boundary mode `at` is the index of the node whose completion triggers the cut
CUTS = [
    (11, "install", "random", -1.0),
    (12, "change", "random", -1.0),
    (13, "add-remove", "random", -1.0),
    (14, "downgrade", "random", -1.0),
    (15, "change", "boundary", 8),   # among the blob fetches
    (16, "add-remove", "boundary", 16),  # among the stops and starts
    (17, "change", "boundary", 17),  # right after the old shellhttpd stopped: boot must start it
    (18, "install", "boundary", 3),  # early: among the first reports and the space check
    (19, "downgrade", "boundary", 20),  # late: among the last starts, the commit and reports
    (20, "change", "random", -1.0),
    (21, "failing", "random", -1.0),  # a target that crash-loops: back on the start version, the target bad
]


def test_every_update_cut_by_a_power_failure_resumes_to_its_target_with_nothing_lost_or_repeated(
        factory, disk, tmp_path: Path, monkeypatch) -> None:
    uris = powercut.publish_releases(factory.home.root)
    # an engine of its own, to cut with the power; in a short folder, as containerd's sockets need
    engine_dir = Path(tempfile.mkdtemp(prefix="fioup-flow-engine-"))
    with powercut.PrivateEngine(engine_dir) as engine:
        monkeypatch.setenv("DOCKER_HOST", engine.host)
        lab = powercut.Lab(factory.home, factory.info, engine.client(), disk.mount, tmp_path, uris, disk,
                           power=engine)
        try:
            cuts = powercut.run_cuts(lab, [powercut.Cut(*cut) for cut in CUTS])
        finally:
            clean_engine(lab.engine)
    shutil.rmtree(engine_dir, ignore_errors=True)
    print("\n".join(powercut.summary(cuts)))
    failed = {f"{c.scenario}@{c.mode}:{c.node or c.at}": c.failures for c in cuts if not c.converged}
    assert not failed, failed
