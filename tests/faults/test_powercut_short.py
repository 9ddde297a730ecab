"""Real updates survive power cuts: a few cuts of scripts/powercut's harness, so CI keeps it.

Each cut freezes a real `fioup-flow apply` (sota dir on the power-cut filesystem) and the test's
own Docker engine with every container in one instant, drops every unsynced write (or, on the
reorder disk, all but what a real disk may keep of them), kills them, boots (the engine, then
`resume`) and checks the harness's invariants, judged by the world: each service runs the image
the Target pins and the sample app serves the version's page, every blob intact, exactly the
plan's events in order, no verified blob fetched again, no app stopped after boot longer than an
uninterrupted run stops it. `scripts/powercut --cuts N [--disk reorder]` runs many more.
The cuts of each scenario are a test case of their own, so that parallel workers share them out.
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

pytestmark = [*FUSE, pytest.mark.factory, pytest.mark.docker, pytest.mark.long, pytest.mark.timeout(400)]

# (seed, scenario, mode, at): at < 0 draws the moment from the seed over the uninterrupted run;
# in boundary mode `at` is K: the cut comes right after the (K+1)-th node finished (its progress line)
CUTS = [
    (11, "install", "random", -1.0),
    (12, "change", "random", -1.0),
    (13, "add-remove", "random", -1.0),
    (14, "downgrade", "random", -1.0),
    (15, "change", "boundary", 8),   # among the blob fetches
    (16, "add-remove", "boundary", 16),  # among the stops and starts
    (17, "change", "boundary", 17),  # right after the old shellhttpd stopped: boot must start it
    (18, "install", "boundary", 3),  # early: among the first reports and the space check
    (19, "downgrade", "boundary", 32),  # late: among the last starts, the commit and reports
    (20, "change", "random", -1.0),
    (21, "failing", "random", -1.0),  # a target that crash-loops: back on the start version, the target bad
]


# on a disk that keeps some unsynced writes too (a journal prefix of folder changes, torn file tails)
REORDER_CUTS = [
    (21, "change", "random", -1.0),
    (22, "install", "boundary", 4),  # the TUF metadata and the first reports written
    (23, "downgrade", "boundary", 30),  # among the starts, with the projects swapped in
    (24, "add-remove", "random", -1.0),
]


def by_scenario(cuts: list[tuple]) -> list:
    """The cuts as test cases, one per scenario: the cases spread over parallel workers, and the
    cuts of a scenario share the one uninterrupted run they are measured against."""
    scenarios = dict.fromkeys(cut[1] for cut in cuts)
    return [pytest.param([cut for cut in cuts if cut[1] == name], id=name) for name in scenarios]


@pytest.fixture(scope="module")
def uris(factory) -> dict[int, dict[str, str]]:
    return powercut.publish_releases(factory.home.root)


def run(factory, uris, disk, tmp_path: Path, monkeypatch, cuts: list[tuple]) -> None:
    """The cuts on `disk`, with an engine of their own to cut with the power; none may fail."""
    # in a short folder, as containerd's sockets need
    engine_dir = Path(tempfile.mkdtemp(prefix="fioup-flow-engine-"))
    with powercut.PrivateEngine(engine_dir) as engine:
        monkeypatch.setenv("DOCKER_HOST", engine.host)
        lab = powercut.Lab(factory.home, factory.info, engine.client(), disk.mount, tmp_path, uris, disk,
                           power=engine)
        try:
            done = powercut.run_cuts(lab, [powercut.Cut(*cut) for cut in cuts])
        finally:
            clean_engine(lab.engine)
    shutil.rmtree(engine_dir, ignore_errors=True)
    print("\n".join(powercut.summary(done)))
    failed = {c.replay: c.failures for c in done if not c.converged}
    assert not failed, failed


@pytest.mark.parametrize("cuts", by_scenario(CUTS))
def test_every_update_cut_by_a_power_failure_resumes_to_its_target_with_nothing_lost_or_repeated(
        factory, uris, disk, tmp_path: Path, monkeypatch, cuts: list[tuple]) -> None:
    run(factory, uris, disk, tmp_path, monkeypatch, cuts)


@pytest.mark.parametrize("disk", ["reorder"], indirect=True)
@pytest.mark.parametrize("cuts", by_scenario(REORDER_CUTS))
def test_an_update_cut_on_a_disk_that_kept_unsynced_writes_too_resumes_to_its_target(
        factory, uris, disk, tmp_path: Path, monkeypatch, cuts: list[tuple]) -> None:
    run(factory, uris, disk, tmp_path, monkeypatch, cuts)
