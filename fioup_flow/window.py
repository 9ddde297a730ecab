"""Install windows: the hours in which the daemon may install an update it has downloaded.

`pacman.install_window` is a comma list of local wall-clock ranges `HH:MM-HH:MM`:

- `"02:00-04:00"`: from 02:00 (included) to 04:00 (excluded), every day;
- `"02:00-04:00,13:00-13:30"`: several windows, open when any of them is;
- `"23:00-01:00"`: a range whose end comes before its start runs across midnight, from 23:00
  to 01:00 the next day;
- `"00:00-24:00"`: always open (24:00 may only end a range).

A range that starts where it ends is refused: it could mean never or always. Times are read
as a wall clock does (as cron reads them): on the day a clock changes for daylight saving, a
window opens by the clock on the wall, so an opening predicted the day before may be an hour
off. Nobody among fioup, aktualizr-lite, balena-supervisor or Mender offers this (see
field-agent.md, "Split steps and windows"); the format is ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from fioup_flow.errors import UsageError

DAY_S = 24 * 3600
_RANGE = re.compile(r"(\d{2}):(\d{2})-(\d{2}):(\d{2})\Z")


@dataclass(frozen=True)
class Window:
    """One daily range, in seconds of the day: [start, end), across midnight when end < start."""

    start: int
    end: int

    def contains(self, second: float) -> bool:
        if self.start < self.end:
            return self.start <= second < self.end
        return second >= self.start or second < self.end


def _seconds(hours: str, minutes: str, may_be_24: bool, text: str) -> int:
    h, m = int(hours), int(minutes)
    if m > 59 or h > 24 or (h == 24 and (m or not may_be_24)):
        raise UsageError(f"pacman.install_window: {text!r} is not a time of day (00:00 to 23:59, "
                         "or 24:00 to end a range)")
    return (h * 60 + m) * 60


def _second_of_day(now: datetime) -> float:
    return now.hour * 3600 + now.minute * 60 + now.second + now.microsecond / 1e6


@dataclass(frozen=True)
class InstallWindows:
    """The windows of `pacman.install_window`; `text` is the value as configured."""

    windows: tuple[Window, ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> InstallWindows:
        """Parse `"HH:MM-HH:MM[,HH:MM-HH:MM...]"`; anything else is a UsageError (exit 2) naming it."""
        windows = []
        for part in (p.strip() for p in str(text).split(",")):
            found = _RANGE.match(part)
            if not found:
                raise UsageError(f"pacman.install_window: {part!r} is not a range HH:MM-HH:MM "
                                 f"(e.g. \"02:00-04:00\", several separated by commas)")
            start = _seconds(found[1], found[2], False, part)
            end = _seconds(found[3], found[4], True, part)
            if start == end:
                raise UsageError(f"pacman.install_window: {part!r} starts where it ends; "
                                 "write 00:00-24:00 for always")
            windows.append(Window(start, end))
        return cls(tuple(windows), str(text))

    def is_open(self, now: datetime) -> bool:
        second = _second_of_day(now)
        return any(w.contains(second) for w in self.windows)

    def next_opening(self, now: datetime) -> datetime:
        """`now` if a window is open, else the moment the next one opens."""
        if self.is_open(now):
            return now
        second = _second_of_day(now)
        wait = min((w.start - second) % DAY_S for w in self.windows)
        return now + timedelta(seconds=wait)
