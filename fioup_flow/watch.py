"""Follow an update another process runs, from the checkpoint store, without writing a byte.

`status --watch` must not disturb the runner nor the durability it relies on: opening a
`CheckpointStore` writes (its settings, its marker, a sync of the folder), so the store is read
through `StoreView`'s copies, the downloads in flight through the length of their partial files,
and whether a runner is alive through the kernel's table of locks (`lock.held`).

Each look is turned into what the executor itself would have told an observer
(`engine.RunObserver`): the plan that runs, each node whose state changed since the last look,
the bytes of each download in flight, and how the run ended. So the views of a watched update
are those of a run in this process. An update ends for the watcher when it leaves the store's
"in progress" (its history entry says how; a rollback frozen in its place is followed next), or
when no process runs it any more (it stays in progress: failed, or interrupted).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from fioup_flow.checkpoint import NodeRecord
from fioup_flow.engine import NodeEvent, RunObserver, RunResult
from fioup_flow.graph import Plan
from fioup_flow.lock import held
from fioup_flow.progress import BlobsOnDisk, blob_digest
from fioup_flow.storeview import StoreView
from tasks import fetch

POLL_S = 0.5
UNRUN_LOOKS = 2  # looks in a row that find the update in progress with no runner, before it counts as stopped


class RecordedError(Exception):
    """A node's failure as its record keeps it (the exception itself lives in the runner)."""


class Watcher:
    """Looks at the store in `folder` every `poll_s`; `lock` is the runners' instance lock."""

    def __init__(self, folder: Path, lock: Path, blobs: BlobsOnDisk, poll_s: float = POLL_S,
                 sleep: Callable[[float], None] = time.sleep):
        self.view = StoreView(folder)
        self.lock = lock
        self.blobs = blobs
        self.poll_s = poll_s
        self.sleep = sleep

    def follow(self, observer: RunObserver) -> None:
        """Tell `observer` of the update in progress and of any that follows it, until none is in
        progress or no process runs it. Returns at once when none is in progress."""
        plan: Plan | None = None
        records: dict[str, NodeRecord] = {}
        unrun = 0
        while True:
            current = self.view.current_plan_id()
            if plan is not None and current != plan.plan_id:
                outcome = self._ended(plan.plan_id)
                if outcome is None:  # not in the history yet: a look at a store mid-write; again
                    self.sleep(self.poll_s)
                    continue
                observer.plan_ended(plan, RunResult(plan.plan_id, outcome))
                plan = None
            if current is None:
                return
            if plan is None:
                plan = self.view.plan(current)
                if plan is None:  # ended between the two looks
                    self.sleep(self.poll_s)
                    continue
                records = self.view.records(plan.plan_id, plan.graph.nodes)
                observer.plan_started(plan, records)
            else:
                records = self._changes(plan, records, observer)
            self._downloads(plan, records, observer)
            unrun = 0 if held(self.lock) else unrun + 1
            if unrun >= UNRUN_LOOKS:
                failed = any(r.state == "failed" for r in records.values())
                observer.plan_ended(plan, RunResult(plan.plan_id, "failed" if failed else "interrupted"))
                return
            self.sleep(self.poll_s)

    def _ended(self, plan_id: str) -> str | None:
        """How plan `plan_id` ended, from its history entry (None if it is not there yet)."""
        return next((entry["outcome"] for entry in self.view.history() if entry["plan_id"] == plan_id), None)

    def _changes(self, plan: Plan, before: dict[str, NodeRecord], observer: RunObserver) -> dict[str, NodeRecord]:
        """The records now; each node whose state changed since `before` told as the executor tells it."""
        now = self.view.records(plan.plan_id, plan.graph.nodes)
        for node_id in plan.order():
            record = now[node_id]
            if record.state != before[node_id].state:
                node = plan.node(node_id)
                observer.node_event(NodeEvent(
                    node, record.state, record.bytes, node.size or None,
                    RecordedError(record.error) if record.error else None,
                    already=record.state == "done" and record.attempts == 0))
        return now

    def _downloads(self, plan: Plan, records: dict[str, NodeRecord], observer: RunObserver) -> None:
        """The bytes each download in flight holds, from its partial file."""
        for node in plan.nodes():
            if node.kind == fetch.KIND and records[node.id].state == "running":
                size = self.blobs.partial_size(blob_digest(node))
                observer.node_event(NodeEvent(node, "progress", size, node.size or None))
