"""The durable outbox: reports wait here until the gateway has accepted them, or refused them for good.

fioup deletes a batch of events once the POST went through, even if the gateway answered
with an error, so those events are lost. Here an item leaves the pending set only after a 2xx
answer, in the same durable transaction that records it as sent, and every item keeps its id:
if power fails after the gateway accepted a batch but before we recorded it, the batch is sent
again and the gateway, which deduplicates by event id, keeps each event once.

An item the gateway refuses for good (a 4xx other than 408 and 429: the real gateway answers 400
to a body it cannot parse and 413 to one over its 100 KiB limit) is set aside, with the
gateway's status and reason, so that it cannot hold back the items behind it. A refused batch
is split in halves until the refused items stand alone: one bad event costs only itself.

Two kinds of item:
- events and other one-off reports (`put`), each with an id fixed by its sender: queueing an id
  again is a no-op, as long as the id is remembered. The ids of the last `KEEP_FINISHED`
  delivered or set-aside items are; a re-queue can only come from the update in progress (its
  report nodes, its failure event), which queues a few dozen at most.
- reports of what the device *is* (`put_state`: apps-states, system info), one topic each:
  queued only when they differ from the last one queued. They are not merged while they wait:
  the gateway hears every change, in order, each with the time it was seen.

Everything is bounded: pending items are read from the oldest still pending (`head`) on, not by
scanning the store; remembered ids and set-aside items are kept in rings of fixed size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fioup_flow.durable import full_disk_as_no_space, open_cache
from fioup_flow.errors import NoSpaceError
from fioup_flow.gateway import GatewayError, NotSentError

log = logging.getLogger(__name__)

EVENTS = "events"
BATCH = 50
BATCH_BYTES = 64 * 1024  # the real gateway refuses bodies over 100 KiB (dg-satellite: BodyLimit("100K"))
KEEP_FINISHED = 1000  # ids of delivered or set-aside items remembered, so that a re-queue is a no-op
KEEP_REJECTED = 50  # set-aside items kept for `status`, newest last
LAYOUT = 2  # 1: a `state:` key per item ever queued, and `pending()` scanned every key


class Sender(Protocol):
    def send(self, method: str, path: str, payload: Any) -> None: ...


@dataclass(frozen=True)
class Item:
    seq: int
    item_id: str
    endpoint: str
    method: str
    payload: Any


@dataclass(frozen=True)
class StateReport:
    """A report of what the device is, sent only when it changed (`Outbox.put_state`).

    `topic` is also the endpoint; `fingerprint` says what counts as a change (apps-states leave
    out what changes by itself, such as uptimes); `initial` is the fingerprint the gateway is
    taken to hold before the first report (fioup sends no apps-states while there are no apps).
    The last fingerprint queued is kept durably, beside the queue.
    """

    topic: str
    method: str
    payload: Any
    fingerprint: str
    initial: str | None = None


def outbox_path(flow_dir: Path) -> Path:
    """Where the outbox lives under fioup-flow's state folder (`Config.flow_dir`)."""
    return Path(flow_dir) / "outbox"


def fingerprint(payload: Any) -> str:
    """sha256 of a report's content: text as it is, anything else as canonical JSON."""
    text = payload if isinstance(payload, str) else json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Outbox:
    """Pending reports in send order, the ids of those already delivered, and those set aside."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.cache = open_cache(path)
        self._flush_lock = threading.Lock()
        self._poke = threading.Lock()  # guards the two below
        self._again = False  # a flush was asked for since the background one last started
        self._flusher: threading.Thread | None = None
        if self.cache.get("layout") != LAYOUT:
            self._upgrade()

    def close(self) -> None:
        self.cache.close()

    # -- queueing --------------------------------------------------------------------------

    def known(self, item_id: str) -> bool:
        """True once the item was queued (pending, delivered or set aside): queueing it again does nothing."""
        return f"state:{item_id}" in self.cache

    def delivered(self, item_id: str) -> bool:
        return self.cache.get(f"state:{item_id}") == "sent"

    def put(self, item_id: str, endpoint: str, payload: Any, method: str = "POST") -> None:
        """Queue an item once; NoSpaceError when the disk is full (nothing was queued)."""
        with full_disk_as_no_space(self.path), self.cache.transact():
            if not self.known(item_id):
                self._queue({"id": item_id, "endpoint": endpoint, "method": method, "payload": payload})

    def put_state(self, report: StateReport) -> bool:
        """Queue `report` if it differs from the last one of its topic queued; True if it was queued."""
        key = f"latest:{report.topic}"
        with full_disk_as_no_space(self.path), self.cache.transact():
            if self.cache.get(key, report.initial) == report.fingerprint:
                return False
            self._queue({"id": f"{report.topic}:{uuid.uuid4()}", "endpoint": report.topic, "method": report.method,
                         "payload": report.payload})
            self.cache.set(key, report.fingerprint)
            return True

    def up_to_date(self, report: StateReport) -> bool:
        """True if the last report of this topic queued (so delivered, or to be) has this content."""
        return self.cache.get(f"latest:{report.topic}", report.initial) == report.fingerprint

    def _queue(self, value: dict) -> int:
        seq = self.cache.incr("seq")
        self.cache.set(_pending_key(seq), value)
        self.cache.set(f"state:{value['id']}", "pending")
        return seq

    # -- reading ---------------------------------------------------------------------------

    def pending(self) -> list[Item]:
        """What waits, oldest first: read from the oldest pending item on, never by a scan."""
        items = []
        for seq in range(int(self.cache.get("head", 0)) + 1, int(self.cache.get("seq", 0)) + 1):
            value = self.cache.get(_pending_key(seq))
            if value is not None:  # items leave from the front only: no gaps, but one would cost nothing
                items.append(Item(seq, value["id"], value["endpoint"], value.get("method", "POST"), value["payload"]))
        return items

    def rejected(self) -> list[dict[str, Any]]:
        """The items the gateway refused for good (the last KEEP_REJECTED), oldest first."""
        last = int(self.cache.get("rejected_seq", 0))
        found = (self.cache.get(f"rejected:{n:020d}") for n in range(max(1, last - KEEP_REJECTED + 1), last + 1))
        return [entry for entry in found if entry is not None]

    # -- sending ---------------------------------------------------------------------------

    def flush(self, gateway: Sender) -> int:
        """Send what is pending, oldest first; returns how many items are still pending.

        Stops at the first failure that may heal (the gateway out of reach, a 5xx, 408 or 429;
        order matters to whoever reads the events) and leaves the rest for the next flush; sets
        aside what the gateway refuses for good and goes on. Failures are logged, not raised,
        because a report that cannot go out now must never fail an update.
        """
        with self._flush_lock:
            pending = self.pending()
            while pending:
                batch = _next_batch(pending)
                if not self._deliver(gateway, batch):
                    return len(self.pending())
                pending = pending[len(batch):]
            return 0

    def flush_soon(self, gateway: Sender) -> None:
        """Flush in the background, as fioup's event sender does: an update never waits for its
        reports to reach the gateway (a resume at boot must not wait out a dead gateway's retry
        budget before it starts the apps). `flush` waits for a background flush in progress."""
        with self._poke:
            self._again = True
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_in_background, args=(gateway,),
                                                 name="outbox", daemon=True)
                self._flusher.start()

    def _flush_in_background(self, gateway: Sender) -> None:
        while True:
            with self._poke:
                if not self._again:
                    self._flusher = None
                    return
                self._again = False
            try:
                self.flush(gateway)
            except Exception:  # noqa: BLE001 - e.g. a full disk: the next flush tries again
                log.exception("reports not delivered")

    def settle(self) -> None:
        """Wait until no background flush runs (a command ends with a flush of its own after this)."""
        with self._poke:
            flusher = self._flusher
        if flusher is not None:
            flusher.join()

    def _deliver(self, gateway: Sender, batch: list[Item]) -> bool:
        """Send one batch; False if the rest must wait (the failure may heal)."""
        first = batch[0]
        payload = [i.payload for i in batch] if first.endpoint == EVENTS else first.payload
        try:
            gateway.send(first.method, first.endpoint, payload)
        except GatewayError as exc:
            if not exc.refused:
                log.log(logging.DEBUG if isinstance(exc, NotSentError) else logging.WARNING,
                        "could not deliver report(s) to the gateway: %s", exc)
                return False
            if len(batch) > 1:  # which of them? halves until the refused ones stand alone
                half = len(batch) // 2
                return self._deliver(gateway, batch[:half]) and self._deliver(gateway, batch[half:])
            return self._settle(batch, "rejected", {"status": exc.status_code, "reason": str(exc)})
        except Exception as exc:  # noqa: BLE001 - any other failure keeps the items for later
            log.warning("could not deliver report(s) to the gateway: %s", exc)
            return False
        return self._settle(batch, "sent")

    def _settle(self, items: list[Item], state: str, refusal: dict | None = None) -> bool:
        """Take `items` out of the pending set as `state` (sent or rejected), durably, in one transaction."""
        try:
            with full_disk_as_no_space(self.path), self.cache.transact():
                for item in items:
                    self.cache.delete(_pending_key(item.seq))
                    self.cache.set(f"state:{item.item_id}", state)
                    self._remember(item.item_id)
                    if refusal:
                        log.warning("the gateway refused report %s for good; set aside: %s", item.item_id,
                                    refusal["reason"])
                        self._set_aside(item, refusal)
                self.cache.set("head", max(int(self.cache.get("head", 0)), items[-1].seq))
        except NoSpaceError as exc:  # delivered, not recorded: sent again later, kept once
            log.warning("could not record %d delivered report(s): %s", len(items), exc)
            return False
        return True

    def _remember(self, item_id: str) -> None:
        """Add a finished id to the ring of remembered ids, forgetting the oldest beyond KEEP_FINISHED."""
        n = self.cache.incr("finished_seq")
        self.cache.set(f"finished:{n:020d}", item_id)
        old = self.cache.pop(f"finished:{n - KEEP_FINISHED:020d}", None)
        if old is not None and self.cache.get(f"state:{old}") != "pending":
            self.cache.delete(f"state:{old}")

    def _set_aside(self, item: Item, refusal: dict) -> None:
        n = self.cache.incr("rejected_seq")
        self.cache.set(f"rejected:{n:020d}", {"id": item.item_id, "endpoint": item.endpoint, "method": item.method,
                                              "payload": item.payload, "at": time.time(), **refusal})
        self.cache.delete(f"rejected:{n - KEEP_REJECTED:020d}")

    # -- an outbox written by an older fioup-flow ----------------------------------------------

    def _upgrade(self) -> None:
        """Layout 1 kept a `state:` key per item ever queued and no `head`: once, in one transaction,
        start `head` at the oldest pending item and keep only the newest delivered ids."""
        with full_disk_as_no_space(self.path), self.cache.transact():
            keys = [k for k in self.cache.iterkeys() if isinstance(k, str)]
            seqs = [int(k.split(":", 1)[1]) for k in keys if k.startswith("pending:")]
            self.cache.set("head", min(seqs) - 1 if seqs else int(self.cache.get("seq", 0)))
            for key in keys:
                if key.startswith("state:") and self.cache.get(key) == "sent":
                    self._remember(key.split(":", 1)[1])
            self.cache.set("layout", LAYOUT)


def _pending_key(seq: int) -> str:
    return f"pending:{seq:020d}"


def _next_batch(pending: list[Item]) -> list[Item]:
    """Consecutive events go in one POST (up to BATCH, and BATCH_BYTES of JSON); any other report alone."""
    first = pending[0]
    if first.endpoint != EVENTS:
        return [first]
    batch, size = [], 0
    for item in pending[:BATCH]:
        size += len(json.dumps(item.payload))
        if item.endpoint != EVENTS or (batch and size > BATCH_BYTES):
            break
        batch.append(item)
    return batch
