"""Faults the factory can be told to inject, so tests can put a device in the worst moments.

Kept in `<home>/faults.json` and read at each request, so a test (or a person) switches them
on and off while the factory runs. Known faults:
- `events_delay_s`: after recording a batch of events, wait this long before answering, so
  the device can be killed after the gateway holds an event and before the device knows it.
"""

from __future__ import annotations

import json
from typing import Any

from fioup_flow.durable import write_atomic
from fioup_flow.factory.home import FactoryHome

FAULTS_FILE = "faults.json"


class Faults:
    def __init__(self, home: FactoryHome):
        self.path = home.root / FAULTS_FILE

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return json.loads(self.path.read_text()).get(name, default)
        except (OSError, ValueError):
            return default

    def set(self, **values: Any) -> None:
        write_atomic(self.path, json.dumps(values, sort_keys=True).encode())

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
