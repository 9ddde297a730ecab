"""The durable outbox: reports wait here until the gateway has accepted them.

fioup deletes a batch of events once the POST went through, even if the gateway answered
with an error, so those events are lost. Here an item leaves the pending set only after a 2xx
answer, in the same durable transaction that records it as sent, and every item keeps its id:
if power fails after the gateway accepted a batch but before we recorded it, the batch is sent
again and the gateway, which deduplicates by event id, keeps each event once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fioup_flow.durable import full_disk_as_no_space, open_cache
from fioup_flow.errors import NoSpaceError

log = logging.getLogger(__name__)

EVENTS = "events"
BATCH = 50


class Poster(Protocol):
    def post_json(self, path: str, payload: Any) -> None: ...


@dataclass(frozen=True)
class Item:
    key: str
    item_id: str
    endpoint: str
    payload: Any


class Outbox:
    """Pending reports in send order, and the ids of those already delivered."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.cache = open_cache(path)
        self._flush_lock = threading.Lock()

    def close(self) -> None:
        self.cache.close()

    def known(self, item_id: str) -> bool:
        """True once the item was queued (pending or delivered): queueing it again does nothing."""
        return f"state:{item_id}" in self.cache

    def delivered(self, item_id: str) -> bool:
        return self.cache.get(f"state:{item_id}") == "sent"

    def put(self, item_id: str, endpoint: str, payload: Any) -> None:
        """Queue an item once; NoSpaceError when the disk is full (nothing was queued)."""
        with full_disk_as_no_space(self.path), self.cache.transact():
            if self.known(item_id):
                return
            seq = self.cache.incr("seq")
            self.cache.set(f"pending:{seq:020d}", {"id": item_id, "endpoint": endpoint, "payload": payload})
            self.cache.set(f"state:{item_id}", "pending")

    def pending(self) -> list[Item]:
        items = []
        for key in self.cache.iterkeys():
            if isinstance(key, str) and key.startswith("pending:"):
                value = self.cache.get(key)
                if value is not None:
                    items.append(Item(key, value["id"], value["endpoint"], value["payload"]))
        return items

    def _mark_sent(self, items: list[Item]) -> None:
        with full_disk_as_no_space(self.path), self.cache.transact():
            for item in items:
                self.cache.delete(item.key)
                self.cache.set(f"state:{item.item_id}", "sent")

    def flush(self, gateway: Poster) -> int:
        """Send what is pending, oldest first; returns how many items are still pending.

        Stops at the first failure (order matters to whoever reads the events) and leaves the
        rest for the next flush; the failure is logged, not raised, because a report that
        cannot go out now must never fail an update.
        """
        with self._flush_lock:
            pending = self.pending()
            while pending:
                batch = _next_batch(pending)
                try:
                    payload = [i.payload for i in batch] if batch[0].endpoint == EVENTS else batch[0].payload
                    gateway.post_json(batch[0].endpoint, payload)
                except Exception as exc:  # noqa: BLE001 - any failure keeps the items for later
                    log.warning("could not deliver %d report(s) to the gateway: %s", len(pending), exc)
                    return len(pending)
                try:
                    self._mark_sent(batch)
                except NoSpaceError as exc:  # delivered, not recorded: sent again later, kept once
                    log.warning("could not record %d delivered report(s): %s", len(batch), exc)
                    return len(pending)
                pending = pending[len(batch):]
            return 0


def _next_batch(pending: list[Item]) -> list[Item]:
    """Consecutive events go in one POST (up to BATCH); any other report goes alone."""
    first = pending[0]
    if first.endpoint != EVENTS:
        return [first]
    batch = []
    for item in pending[:BATCH]:
        if item.endpoint != EVENTS:
            break
        batch.append(item)
    return batch
