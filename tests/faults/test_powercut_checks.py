"""The power-cut harness's own judgements, on made-up figures. Invariant 5: an app that runs
before and after an update may stay stopped after boot about as long as an uninterrupted run
kept it stopped, not longer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "lib"))
import powercut  # noqa: E402

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

