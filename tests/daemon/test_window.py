"""Install windows: how `pacman.install_window` is written, and when it is open and opens next."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from fioup_flow.errors import UsageError
from fioup_flow.window import InstallWindows

TZ = timezone(timedelta(hours=1))


def at(hh: int, mm: int, ss: int = 0, day: int = 27) -> datetime:
    return datetime(2026, 11, day, hh, mm, ss, tzinfo=TZ)


def test_a_window_is_open_from_its_start_included_to_its_end_excluded() -> None:
    window = InstallWindows.parse("02:00-04:00")
    assert not window.is_open(at(1, 59, 59))
    assert window.is_open(at(2, 0))
    assert window.is_open(at(3, 59, 59))
    assert not window.is_open(at(4, 0))


def test_a_window_whose_end_comes_before_its_start_runs_across_midnight() -> None:
    window = InstallWindows.parse("23:00-01:00")
    assert window.is_open(at(23, 30)) and window.is_open(at(0, 30))
    assert not window.is_open(at(1, 0)) and not window.is_open(at(22, 59))
    assert window.next_opening(at(12, 0)) == at(23, 0)


def test_several_windows_are_separated_by_commas_and_the_nearest_opens_next() -> None:
    window = InstallWindows.parse("02:00-04:00, 13:00-13:30")
    assert window.is_open(at(13, 15)) and not window.is_open(at(13, 30))
    assert window.next_opening(at(5, 0)) == at(13, 0)
    assert window.next_opening(at(14, 0)) == at(2, 0, day=28)
    assert window.next_opening(at(3, 0)) == at(3, 0), "open now: due now"


def test_24_00_ends_a_day_and_00_00_to_24_00_is_always_open() -> None:
    assert InstallWindows.parse("22:00-24:00").is_open(at(23, 59, 59))
    always = InstallWindows.parse("00:00-24:00")
    assert all(always.is_open(at(h, 0)) for h in range(24))


@pytest.mark.parametrize("text", ["", "2:00-4:00", "02:00", "02:00-04:60", "25:00-01:00", "24:00-01:00",
                                  "03:00-03:00", "00:00-00:00", "02:00-04:00,", "02:00-04:00;05:00-06:00"])
def test_anything_else_is_refused_naming_the_key_and_the_part(text: str) -> None:
    with pytest.raises(UsageError, match="pacman.install_window"):
        InstallWindows.parse(text)
