"""A power-cut filesystem mounted for one test (`synced` disk; parametrize `disk` indirectly
with "reorder" for a disk that may keep unsynced writes too)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from faults.powercutfs import PowercutMount


@pytest.fixture
def disk(tmp_path: Path, request) -> Iterator[PowercutMount]:
    with PowercutMount(tmp_path / "backing", tmp_path / "mnt", mode=getattr(request, "param", "synced")) as mounted:
        yield mounted
