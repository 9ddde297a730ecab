"""A download rate limit shared by every fetch of an update (a token bucket).

Devices on metered or shared links need updates that do not saturate them (fioup has no limit;
aktualizr-lite users asked for one). Parallel fetches draw from one bucket, so the limit holds
for the update as a whole, not per blob.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Iterable, Iterator

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)[bB]?(?:/s)?\s*$")
_UNITS = {"": 1, "k": 1000, "m": 1000 ** 2, "g": 1000 ** 3}


def parse_rate(text: str) -> float | None:
    """"20M" or "500k" or "1000000" (bytes per second) -> float; "" or "0" -> None (no limit)."""
    match = _RATE.match(str(text))
    if not match:
        raise ValueError(f"not a rate: {text!r} (examples: 500k, 20M, 1000000)")
    rate = float(match[1]) * _UNITS[match[2].lower()]
    return rate or None


class TokenBucket:
    """At most `rate` bytes per second on average, with bursts of up to one second's worth."""

    def __init__(self, rate: float):
        self.rate = rate
        self.tokens = rate
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        """Block until `n` bytes may pass."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate) - n
            self.stamp = now
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait:
            time.sleep(wait)

    def limit(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.take(len(chunk))
            yield chunk
