"""The power-cut harness's own judgements, on made-up figures. Invariant 5: an app that runs
before and after an update may stay stopped after boot about as long as an uninterrupted run
kept it stopped, not longer, give or take an engine restart that freed a port Docker leaked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "lib"))
import powercut  # noqa: E402
from private_engine import PrivateEngine  # noqa: E402

BOOT = 1000.0


def cut_with(stopped: dict[str, float]) -> powercut.Cut:
    return powercut.Cut(seed=1, scenario="change", mode="random", at=1.0, stopped=stopped)


def test_an_app_down_at_boot_counts_as_stopped_from_boot_until_its_containers_last_start() -> None:
    seen = {"shellhttpd": {"start": [BOOT + 0.4, BOOT + 1.2], "die": []}, "pair": {"start": [], "die": []}}
    assert powercut.stopped_windows(seen, BOOT, down={"shellhttpd"}) == pytest.approx(
        {"shellhttpd": 1.2, "pair": 0.0})


def test_an_app_stopped_after_boot_counts_from_its_first_death_and_one_never_restarted_forever() -> None:
    seen = {"shellhttpd": {"start": [BOOT + 3.0], "die": [BOOT + 2.0, BOOT + 2.5]},
            "pair": {"start": [], "die": [BOOT + 1.0]}}
    assert powercut.stopped_windows(seen, BOOT, down=set()) == pytest.approx(
        {"shellhttpd": 1.0, "pair": float("inf")})


def test_a_stop_within_the_uninterrupted_window_and_its_slack_passes_and_a_longer_one_fails() -> None:
    baseline = powercut.Baseline(seconds=5.0, stopped={"shellhttpd": 0.8, "pair": 0.0})
    factor, margin = powercut.WINDOW_SLACK
    within = cut_with({"shellhttpd": 0.8 * factor + margin, "pair": 0.0, "ticker": 9.0})  # ticker: new, exempt
    powercut.check_stopped(within, baseline)
    assert within.converged
    late = cut_with({"shellhttpd": 0.8 * factor + margin + 0.1, "pair": 0.0})
    powercut.check_stopped(late, baseline)
    assert "shellhttpd stopped" in late.failures["5-stopped"]



def test_an_engine_restart_that_freed_a_leaked_port_adds_its_own_time_to_the_allowance() -> None:
    baseline = powercut.Baseline(seconds=5.0, stopped={"shellhttpd": 0.8})
    factor, margin = powercut.WINDOW_SLACK
    allowed = 0.8 * factor + margin + 2.5
    within = cut_with({"shellhttpd": allowed - 0.1})
    within.engine_restarts = [2.5]
    powercut.check_stopped(within, baseline)
    assert within.converged
    late = cut_with({"shellhttpd": allowed + 0.1})
    late.engine_restarts = [2.5]
    powercut.check_stopped(late, baseline)
    assert "+2.5 s of engine restart" in late.failures["5-stopped"]


def test_an_engine_restart_is_timed_from_the_refused_start_to_the_engine_answering_again(tmp_path) -> None:
    engine = PrivateEngine(tmp_path)
    engine.log.write_text('time="2026-11-27T08:30:20.0Z" level=info msg="API listen on /x/docker.sock"\n')
    since = engine.log_size()
    with engine.log.open("a") as log:
        log.write('time="2026-11-27T08:30:26.977820353Z" level=warning msg="Failed to allocate and map port '
                  '54369-54369: Bind for 127.0.0.1:54369 failed: port is already allocated"\n'
                  'time="2026-11-27T08:30:27.206113792Z" level=info msg="Processing signal \'terminated\'"\n'
                  'time="2026-11-27T08:30:29.636125608Z" level=info msg="API listen on /x/docker.sock"\n')
    assert engine.restarts_since(since) == pytest.approx([29.636126 - 26.977820])
    assert engine.restarts_since(engine.log_size()) == []
