"""Under CI (`CI=true`) a skipped test fails the run: a skip there hides a missing part.

On a developer's machine a test may skip for what the machine lacks (FUSE, root, Graphviz); CI
has all of it, so a skip there means a check that never ran. A test that may skip even there
says why with `@pytest.mark.allowed_skip(reason=...)`: its skip does not fail the run and the
summary lists it with that reason. Loaded by tests/conftest.py (`-p ciskips` elsewhere).
"""

from __future__ import annotations

import os

import pytest

_skips: list[tuple[str, str, str | None]] = []  # (test id, why it skipped, its allowed_skip reason or None)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allowed_skip(reason): this test may skip under CI too (the reason "
                                       "says why); its skip is listed in the summary")
    _skips.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    marker = item.get_closest_marker("allowed_skip")
    report.allowed_skip = marker.kwargs.get("reason", "no reason given") if marker else None
    return report


def _why(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    return (longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)).removeprefix("Skipped: ")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skips.append((report.nodeid, _why(report), getattr(report, "allowed_skip", None)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a whole module skipped at collection
        _skips.append((report.nodeid, _why(report), None))


def _disallowed() -> list[tuple[str, str, str | None]]:
    return [skip for skip in _skips if skip[2] is None] if in_ci() else []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _disallowed() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    allowed = [skip for skip in _skips if skip[2] is not None]
    if allowed:
        terminalreporter.section("skips allowed under CI")
        for nodeid, why, reason in allowed:
            terminalreporter.line(f"{nodeid}: {why} (allowed: {reason})")
    if disallowed := _disallowed():
        terminalreporter.section("skips that fail the run under CI=true", red=True)
        for nodeid, why, _ in disallowed:
            terminalreporter.line(f"{nodeid}: {why}")
