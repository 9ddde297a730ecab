"""Faults the factory can be told to inject, so tests can put a device in the worst moments.

Kept in `<home>/faults.json` and read at each request, so a test (or a person) switches them
on and off while the factory runs. Known faults:
- `events_delay_s`: after recording a batch of events, wait this long before answering, so
  the device can be killed after the gateway holds an event and before the device knows it.
- `http_errors` (and `http_status`, default 503): the next `http_errors` requests to the gateway
  or the api (registration, registry tokens) are answered with that status, as an overloaded
  server behind a load balancer answers; counted down as they are answered.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from fioup_flow.durable import write_atomic
from fioup_flow.factory.home import FactoryHome

FAULTS_FILE = "faults.json"
_COUNT_DOWN = threading.Lock()  # one factory-server process answers on many threads


class Faults:
    def __init__(self, home: FactoryHome):
        self.path = home.root / FAULTS_FILE

    def get(self, name: str, default: Any = None) -> Any:
        return self._load().get(name, default)

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def take_http_error(self) -> int | None:
        """The status to answer this request with while a burst of errors lasts (counting it down)."""
        with _COUNT_DOWN:
            values = self._load()
            left = int(values.get("http_errors", 0))
            if left <= 0:
                return None
            self.set(**dict(values, http_errors=left - 1))
            return int(values.get("http_status", 503))

    def set(self, **values: Any) -> None:
        write_atomic(self.path, json.dumps(values, sort_keys=True).encode())

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
