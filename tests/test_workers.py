"""In parallel runs (scripts/test, pytest-xdist) every worker runs its tests on a Docker engine of
its own, as the tests empty the engine they run on: no two live workers share one, and a worker
started in place of one that died takes the engine it freed (tests/support.py, `claim_engine`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# a worker: claims an engine, says which, and holds it until its stdin closes
WORKER = "import os, sys, support; lock = support.claim_engine(); print(os.environ['DOCKER_HOST'], flush=True); sys.stdin.read()"


def start_worker(engines: list[str], name: str) -> tuple[subprocess.Popen, str]:
    """A worker process named `name` among `engines`; returns it and the engine it took."""
    env = dict(os.environ, PYTHONPATH=str(TESTS), PYTEST_XDIST_WORKER=name, FIOUP_FLOW_TEST_ENGINES=" ".join(engines))
    worker = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    line = worker.stdout.readline().strip()
    if not line:
        worker.stdin.close()
        raise AssertionError(worker.stderr.read())
    return worker, line


@pytest.fixture
def engines(tmp_path: Path) -> list[str]:
    """Two engines as scripts/test lists them (their sockets; no dockerd needed to claim one)."""
    for n in range(2):
        (tmp_path / f"docker{n}").mkdir()
    return [f"unix://{tmp_path}/docker{n}/docker.sock" for n in range(2)]


def test_live_workers_never_share_an_engine_and_a_replacement_takes_the_one_freed(engines) -> None:
    first, first_engine = start_worker(engines, "gw0")
    second, second_engine = start_worker(engines, "gw1")
    assert {first_engine, second_engine} == set(engines)
    with pytest.raises(AssertionError, match="no free engine for worker gw2"):
        start_worker(engines, "gw2")
    second.stdin.close()
    second.wait(timeout=30)
    replacement, taken = start_worker(engines, "gw3")  # as xdist names a worker restarted after a crash
    assert taken == second_engine
    for worker in (first, replacement):
        worker.stdin.close()
        worker.wait(timeout=30)


def test_outside_a_worker_docker_host_is_left_as_it_is(engines) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_XDIST_WORKER"}
    done = subprocess.run([sys.executable, "-c", "import os, support; print(support.claim_engine(), os.environ.get('DOCKER_HOST'))"],
                          capture_output=True, text=True, timeout=60,
                          env=dict(env, PYTHONPATH=str(TESTS), DOCKER_HOST="unix:///one.sock",
                                   FIOUP_FLOW_TEST_ENGINES=" ".join(engines)))
    assert done.stdout.split() == ["None", "unix:///one.sock"], done.stderr
