"""The `factory` fixture: one real local factory for the session (`up` in a temp home, `down` at the end).

It yields a `core_factory.Factory` (`.home: FactoryHome`, `.info`: the JSON `up` printed).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from core_factory import Factory, start_factory, stop_factory


@pytest.fixture(scope="session")
def factory(tmp_path_factory) -> Iterator[Factory]:
    running = start_factory(tmp_path_factory.mktemp("factory") / "home")
    try:
        yield running
    finally:
        stop_factory(running)
