"""A power-cut filesystem mounted for one test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from faults.powercutfs import PowercutMount


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[PowercutMount]:
    with PowercutMount(tmp_path / "backing", tmp_path / "mnt") as mounted:
        yield mounted
