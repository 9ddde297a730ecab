"""Under CI=true a skipped test fails the run, unless it is marked `allowed_skip` with a reason,
which the summary then shows; on a developer's machine a skip is only a skip (tests/ciskips.py).
Each case runs pytest on a small test file of its own, with the rule loaded as a plugin, in one
process and in parallel workers (pytest-xdist) as scripts/test runs the suite: there the workers
run the tests and the controller, which only hears their reports, decides the run's outcome."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
CASES = '''
import pytest

def test_runs():
    pass

@pytest.mark.skipif(True, reason="needs /dev/fuse")
def test_needs_fuse():
    pass

@pytest.mark.allowed_skip(reason="Docker leaks the port at random")
def test_may_find_no_leak():
    pytest.skip("this engine leaked no port in 40 cuts")

@pytest.mark.xfail(reason="known")
def test_known_bug():
    assert False
'''


def pytest_run(tmp_path: Path, ci: str | None, *select: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_cases.py").write_text(CASES)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(TESTS)}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "ciskips", "-p", "no:cacheprovider", "-c",
                           os.devnull, "--rootdir", str(tmp_path), str(tmp_path / "test_cases.py"), *select],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)

IN_WORKERS = pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["one process", "xdist workers"])


@IN_WORKERS
def test_under_ci_a_skip_fails_the_run_and_the_summary_names_it(tmp_path, workers) -> None:
    done = pytest_run(tmp_path, "true", *workers)
    assert done.returncode == 1, done.stdout
    assert "skips that fail the run under CI=true" in done.stdout
    assert "test_cases.py::test_needs_fuse: needs /dev/fuse" in done.stdout


@IN_WORKERS
def test_an_allowed_skip_passes_under_ci_and_the_summary_gives_its_reason(tmp_path, workers) -> None:
    done = pytest_run(tmp_path, "true", "-k", "not fuse", *workers)
    assert done.returncode == 0, done.stdout
    assert ("test_cases.py::test_may_find_no_leak: this engine leaked no port in 40 cuts "
            "(allowed: Docker leaks the port at random)") in done.stdout


@IN_WORKERS
def test_on_a_developers_machine_a_skip_is_only_a_skip(tmp_path, workers) -> None:
    assert pytest_run(tmp_path, None, *workers).returncode == 0
    assert pytest_run(tmp_path, "false", *workers).returncode == 0
