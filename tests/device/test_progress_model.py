"""The progress model's rules, on a small plan and a clock the test moves: what counts as fetched,
how the rate and the time left follow the bytes, where each app stands. (The figures of real
updates are judged against the registry and the engine in tests/update/test_progress.py.)"""

from __future__ import annotations

from fioup_flow.checkpoint import NodeRecord
from fioup_flow.engine import NodeEvent
from fioup_flow.graph import Plan
from fioup_flow.progress import Progress
from tasks import fetch, install, start, stop

MB = 1_000_000
HOST = "hub.example/factory/web"


class Blobs:
    """The blob store as the model sees it: which blobs it holds, and the partial downloads."""

    def __init__(self, held: set[str] = frozenset(), partial: dict[str, int] | None = None) -> None:
        self.held, self.partial = held, partial or {}

    def has(self, digest: str, size: int | None = None) -> bool:
        return digest in self.held

    def partial_size(self, digest: str) -> int:
        return self.partial.get(digest, 0)


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def a_plan() -> Plan:
    """App `web` updated: a manifest (in the store since planning) and two layers; `old` removed;
    `db` unchanged."""
    plan = Plan(meta={"target": "t-2", "version": 2, "apps": {"web": "w", "db": "d"},
                      "diff": {"remove": ["old"]}})
    blobs = [fetch.node(f"{HOST}@{digest(i)}", size, kind)
             for i, (size, kind) in enumerate([(1000, "app-manifest"), (10 * MB, "layer"), (30 * MB, "layer")])]
    for node in blobs:
        plan.add(node)
    plan.add(install.node("web", f"{HOST}@{digest(9)}", 40 * MB + 1000), [n.id for n in blobs])
    plan.add(stop.node("web"), ["install:web@" + digest(9)])
    plan.add(stop.node("old"), ["install:web@" + digest(9)])
    plan.add(start.node_for(_tree("web")), ["stop:web"])
    return plan


def _tree(name: str):
    class Tree:  # what start.node_for reads of an app tree
        uri, services, expect = f"{HOST}@{digest(9)}", {}, {}
    Tree.name = name
    return Tree


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def event(plan: Plan, index: int, state: str, done: int = 0) -> NodeEvent:
    return NodeEvent(plan.node(f"fetch:{digest(index)}"), state, done)


def test_the_total_is_what_the_update_moves_and_a_partial_counts_as_fetched() -> None:
    plan = a_plan()
    progress = Progress(lambda: Blobs(held={digest(0)}, partial={digest(2): 4 * MB}))
    progress.start(plan, {f"fetch:{digest(1)}": NodeRecord(state="done", attempts=1)})
    snap = progress.snapshot()
    assert (snap.bytes_total, snap.blobs_total) == (40 * MB, 2), "the manifest was in the store: not fetched"
    assert (snap.bytes_done, snap.blobs_done) == (14 * MB, 1), "an earlier run's blob and partial are done"


def test_the_rate_is_the_last_seconds_and_a_stall_has_no_time_left() -> None:
    plan, clock = a_plan(), Clock()
    progress = Progress(lambda: Blobs(held={digest(0)}), clock)
    progress.start(plan, {})
    for second in range(1, 11):  # 1 MB/s for 10 s...
        clock.now += 1
        progress.on_event(event(plan, 2, "progress", second * MB))
    snap = progress.snapshot()
    assert snap.rate_bps == MB and snap.eta_s == (40 - 10) * MB / MB
    for second in range(1, 4):  # ...then 4 MB/s
        clock.now += 1
        progress.on_event(event(plan, 2, "progress", (10 + 4 * second) * MB))
    assert progress.snapshot().rate_bps == (3 * 4 + 2 * 1) * MB / 5, "the last 5 s only"
    clock.now += 6  # nothing for 6 s
    snap = progress.snapshot()
    assert (snap.rate_bps, snap.eta_s) == (0, None)


def test_each_app_stands_at_its_first_step_not_done() -> None:
    plan = a_plan()
    progress = Progress(lambda: Blobs())
    progress.start(plan, {})
    assert progress.snapshot().apps == {"web": "waiting", "db": "unchanged", "old": "waiting"}
    progress.on_event(event(plan, 1, "running"))
    assert progress.snapshot().apps["web"] == "fetch"
    for index in range(3):
        progress.on_event(event(plan, index, "done"))
    assert (progress.snapshot().apps["web"], progress.snapshot().phase) == ("install", "install")
    for node_id in ("install:web@" + digest(9), "stop:web", "stop:old"):
        progress.state(node_id, "done")
    assert progress.snapshot().apps == {"web": "start", "db": "unchanged", "old": "removed"}
    progress.state("start:web@" + digest(9), "failed")
    assert (progress.snapshot().apps["web"], progress.snapshot().phase) == ("failed", "start")
