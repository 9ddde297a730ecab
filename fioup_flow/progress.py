"""Where an update stands, in figures a person or a program can follow: its phase, the bytes and
blobs fetched of the total, the download rate and the time left, and each app's step.

It is fed the executor's node events (a run in this process, `engine.observed_by`) or what looks
at the checkpoint store find (a run in another process, `fioup_flow.watch`), and knows plans and
node kinds, nothing of Docker nor of terminals: the views in `fioup_flow/cli/` draw it.

What counts as downloaded is what the update moves over the network: its fetch nodes, except
those whose blob was in the store before it needed fetching (kept from an earlier Target, or
fetched while the plan was made: manifests, bundles). A fetch node recorded done that never ran
(no attempt) was found in place, and so was one not run yet whose blob is in the store already.
So a run, a resumed run and a watcher count the same total, and a resumed update counts the
bytes its earlier runs fetched (and the partial downloads they left) as done.

The phase is the earliest one that still has a node not done, so it only moves forward while a
plan runs; each report node belongs to the phase it opens or closes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from fioup_flow.checkpoint import NodeRecord
from fioup_flow.engine import NodeEvent
from fioup_flow.graph import Plan
from fioup_flow.reference import PinnedRef
from fioup_flow.task import Node
from tasks import commit, fetch, install, prune, report, space, start, stop

PHASES = ("plan", "fetch", "install", "start", "health", "commit", "report", "done")
PHASE_OF_KIND = {space.KIND: "fetch", fetch.KIND: "fetch", install.KIND: "install", stop.KIND: "start",
                 start.START: "start", start.HEALTHY: "health", commit.KIND: "commit", prune.KIND: "report",
                 report.APPS_STATES_KIND: "report"}
PHASE_OF_EVENT = {"UpdateInitStarted": "plan", "UpdateInitCompleted": "plan", "EcuDownloadStarted": "fetch",
                  "EcuDownloadCompleted": "fetch", "EcuInstallationStarted": "install",
                  "EcuInstallationApplied": "install", "EcuInstallationCompleted": "report"}
# an app's steps, in the order it goes through them (a removed app only stops)
STEPS = ((fetch.KIND, "fetch"), (install.KIND, "install"), (stop.KIND, "stop"), (start.START, "start"),
         (start.HEALTHY, "health"))
RATE_WINDOW_S = 5.0  # the rate is the bytes of the last seconds: it follows a link that slows down
SAMPLE_EVERY_S = 0.1


class BlobsOnDisk(Protocol):
    """What the model asks of the blob store (`store.BlobStore`): two looks, no change."""

    def has(self, digest: str, size: int | None = None) -> bool: ...

    def partial_size(self, digest: str) -> int: ...


@dataclass(frozen=True)
class Snapshot:
    """The figures at one moment. `rate_bps` and `eta_s` are None while unknown (nothing moved yet,
    or the download stalled); `eta_s` is 0 once every byte is in."""

    plan_id: str | None
    kind: str | None  # update | rollback
    target: str | None
    target_version: int | None
    phase: str
    nodes_done: int
    nodes_total: int
    bytes_done: int
    bytes_total: int
    blobs_done: int
    blobs_total: int
    rate_bps: float | None
    eta_s: float | None
    mean_rate_bps: float | None  # over the time this process saw bytes move
    apps: dict[str, str]
    elapsed_s: float

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("rate_bps", "mean_rate_bps"):
            data[key] = None if data[key] is None else round(data[key])
        data["eta_s"] = None if self.eta_s is None else round(self.eta_s, 1)
        data["elapsed_s"] = round(self.elapsed_s, 3)
        return data


def blob_digest(node: Node) -> str:
    """The digest of the blob a fetch node fetches."""
    return PinnedRef.parse(node.params["uri"]).digest


def phase_of(node: Node) -> str:
    if node.kind == report.EVENT_KIND:
        return PHASE_OF_EVENT.get(node.params.get("event"), "report")
    return PHASE_OF_KIND.get(node.kind, "report")


def app_steps(plan: Plan) -> dict[str, list[tuple[str, list[str]]]]:
    """Each app of the plan (those of its Target, and those it removes) -> its steps, each with its nodes.

    An app's blobs are the fetch nodes its install waits on; an app with no node is unchanged."""
    apps: dict[str, list[tuple[str, list[str]]]] = {
        name: [] for name in [*plan.meta.get("apps", {}), *plan.meta.get("diff", {}).get("remove", [])]}
    by_kind: dict[tuple[str, str], list[str]] = {}
    for node in plan.nodes():
        if node.kind in (install.KIND, stop.KIND, start.START, start.HEALTHY):
            app = node.params["app"]
            by_kind.setdefault((app, node.kind), []).append(node.id)
            if node.kind == install.KIND:
                by_kind[(app, fetch.KIND)] = sorted(n for n in plan.ancestors(node.id) if plan.node(n).kind == fetch.KIND)
    for name in apps:
        apps[name] = [(step, by_kind[(name, kind)]) for kind, step in STEPS if by_kind.get((name, kind))]
    return apps


class Progress:
    """The figures of the plan that runs (or is watched), updated from its events; thread-safe, as the
    executor's nodes report from threads of their own."""

    def __init__(self, blobs: Callable[[], BlobsOnDisk], clock: Callable[[], float] = time.monotonic):
        self._blobs = blobs
        self._clock = clock
        self._lock = threading.Lock()
        self._plan: Plan | None = None
        self._started = clock()
        self._states: dict[str, str] = {}
        self._sizes: dict[str, int] = {}  # counted fetch node -> its blob's size
        self._fetched: dict[str, int] = {}  # counted fetch node not done -> bytes it holds so far
        self._apps: dict[str, list[tuple[str, list[str]]]] = {}
        self._moved = 0  # bytes this process saw arrive
        self._samples: deque[tuple[float, int]] = deque()
        self._first_byte: float | None = None
        self._last_byte = 0.0

    # -- feeding it ----------------------------------------------------------------------------

    def start(self, plan: Plan, records: dict[str, NodeRecord]) -> None:
        """A run of `plan` begins, its nodes where `records` says (a resumed plan has some done)."""
        blobs = self._blobs()
        with self._lock:
            self._plan = plan
            self._states = {node_id: records.get(node_id, NodeRecord()).state for node_id in plan.graph.nodes}
            self._sizes, self._fetched = {}, {}
            for node in plan.nodes():
                if node.kind != fetch.KIND:
                    continue
                record, digest = records.get(node.id, NodeRecord()), blob_digest(node)
                if record.attempts == 0 and (record.state == "done" or blobs.has(digest, node.size)):
                    continue  # in the store before this update fetched it
                self._sizes[node.id] = node.size
                if record.state != "done":
                    self._fetched[node.id] = blobs.partial_size(digest)
            self._apps = app_steps(plan)

    def on_event(self, event: NodeEvent) -> None:
        if event.state == "progress":
            self.fetched(event.node.id, event.done_bytes)
        elif event.state != "retrying":  # a node retrying is still running
            self.state(event.node.id, event.state)

    def ended(self, outcome: str) -> None:
        """The run ended; a completed plan has every node done (a watcher's last look may have come
        before its last nodes were)."""
        if outcome == "completed":
            with self._lock:
                self._states = dict.fromkeys(self._states, "done")
                self._fetched.clear()

    def state(self, node_id: str, state: str) -> None:
        with self._lock:
            self._states[node_id] = state
            if node_id in self._sizes:
                if state == "done":
                    self._fetched.pop(node_id, None)
                else:
                    self._fetched.setdefault(node_id, 0)

    def fetched(self, node_id: str, done_bytes: int) -> None:
        """Node `node_id` holds `done_bytes` of its blob now (a download restarted from zero holds fewer)."""
        with self._lock:
            if node_id not in self._sizes or self._states.get(node_id) == "done":
                return
            moved = done_bytes - self._fetched.get(node_id, 0)
            self._fetched[node_id] = done_bytes
            if moved <= 0:
                return
            now = self._clock()
            self._first_byte = self._first_byte if self._first_byte is not None else now
            self._last_byte = now
            self._moved += moved
            if not self._samples or now - self._samples[-1][0] >= SAMPLE_EVERY_S:
                self._samples.append((now, self._moved))
            else:
                self._samples[-1] = (self._samples[-1][0], self._moved)

    # -- reading it ----------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = self._clock()
            plan, meta = self._plan, self._plan.meta if self._plan else {}
            done = [n for n, size in self._sizes.items() if self._states.get(n) == "done"]
            bytes_done = sum(self._sizes[n] for n in done) + sum(self._fetched.values())
            bytes_total = sum(self._sizes.values())
            rate = self._rate(now)
            return Snapshot(
                plan_id=plan.plan_id if plan else None, kind=meta.get("kind", "update") if plan else None,
                target=meta.get("target"), target_version=meta.get("version"), phase=self._phase(),
                nodes_done=sum(1 for s in self._states.values() if s == "done"), nodes_total=len(self._states),
                bytes_done=bytes_done, bytes_total=bytes_total, blobs_done=len(done), blobs_total=len(self._sizes),
                rate_bps=rate, eta_s=_eta(bytes_total - bytes_done, rate) if plan else None,
                mean_rate_bps=self._mean_rate(),
                apps={name: self._step(name, steps) for name, steps in self._apps.items()},
                elapsed_s=now - self._started)

    def _phase(self) -> str:
        if self._plan is None:
            return PHASES[0]
        waiting = [PHASES.index(phase_of(self._plan.node(n))) for n, s in self._states.items() if s != "done"]
        return PHASES[min(waiting)] if waiting else "done"

    def _step(self, app: str, steps: list[tuple[str, list[str]]]) -> str:
        """The app's first step with a node not done; `waiting` before any of its nodes began."""
        if not steps:
            return "unchanged"
        states = [self._states.get(n, "pending") for _, nodes in steps for n in nodes]
        if "failed" in states:
            return "failed"
        if all(s == "pending" for s in states):
            return "waiting"
        removed = app in (self._plan.meta.get("diff", {}).get("remove", []) if self._plan else [])
        return next((step for step, nodes in steps if any(self._states.get(n) != "done" for n in nodes)),
                    "removed" if removed else "done")

    def _rate(self, now: float) -> float | None:
        """Bytes per second over the last RATE_WINDOW_S (0 when nothing moved in them), or since the
        first byte when that is more recent."""
        if self._first_byte is None:
            return None
        while len(self._samples) > 1 and self._samples[1][0] <= now - RATE_WINDOW_S:
            self._samples.popleft()
        since, base = self._samples[0]
        if since > now - RATE_WINDOW_S:  # the first sample: bytes began to move inside the window
            since, base = self._first_byte, 0
        return _per_second(self._moved - base, now - since)

    def _mean_rate(self) -> float | None:
        if self._first_byte is None:
            return None
        return _per_second(self._moved, self._last_byte - self._first_byte)


def _per_second(moved: int, seconds: float) -> float | None:
    return moved / seconds if seconds >= SAMPLE_EVERY_S else None


def _eta(remaining: int, rate: float | None) -> float | None:
    if remaining <= 0:
        return 0.0
    return remaining / rate if rate else None
