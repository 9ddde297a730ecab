"""A lock per key: work on one key done by one thread at a time, work on other keys beside it.

The plan phase walks the apps' trees at once, and two walks may need the same thing together
(a blob two apps share, a registry token two images of one repository ask for): the second
waits for the first, then finds it done, while walks needing other keys go on undisturbed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class KeyLocks:
    """One `threading.Lock` per key, made on first use (keys are few: digests, token scopes)."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()  # guards the dict, never held while a key's work runs

    @contextmanager
    def held(self, key: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield
