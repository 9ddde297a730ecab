"""The executor, in process: order, resource limits, retries, failures, re-checks, cancel, progress."""

from __future__ import annotations

import dataclasses
import errno
import signal
import threading
import time
from pathlib import Path

import pytest

from fioup_flow.checkpoint import CheckpointStore
from fioup_flow.engine import Executor, NodeEvent, RetryPolicy
from fioup_flow.errors import FetchError, InvalidOngoingUpdateError, NoUpdateInProgressError
from fioup_flow.graph import Plan, PlanError
from fioup_flow.task import Interrupted, Node, TaskContext
from tests.engine.conftest import diamond_plan, failing_plan
from tests.engine.kinds import WriteFile, all_kinds, stream_node, write_node

FAST = RetryPolicy(attempts=3, base_s=0.001, max_wait_s=0.01, budget_s=5)


@pytest.fixture
def store(tmp_path: Path):
    with CheckpointStore(tmp_path / "checkpoint") as store:
        yield store


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path / "work"


def executor(store, work, **kwargs) -> Executor:
    return Executor(store, all_kinds(work), retry=FAST, poll_s=0.02, handle_signals=False, **kwargs)


def runs(work: Path) -> list[str]:
    return (work / "runs.log").read_text().splitlines()


def test_nodes_run_after_their_dependencies_and_a_completed_plan_moves_to_history(store, work):
    plan = diamond_plan()
    result = executor(store, work).run(plan)
    assert (result.outcome, result.exit_code) == ("completed", 0)
    order = runs(work)
    assert sorted(order) == sorted(n.id for n in plan.nodes())
    for u, v in plan.edges():
        assert order.index(u) < order.index(v)
    assert store.current_plan_id() is None
    assert store.history()[0]["outcome"] == "completed"


class Concurrency(WriteFile):
    """Counts how many of its nodes run at once, per resource class."""

    kind = "write"

    def __init__(self, work: Path):
        super().__init__(work)
        self.lock = threading.Lock()
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    def run(self, node: Node, ctx: TaskContext) -> None:
        with self.lock:
            self.now[node.resource] = self.now.get(node.resource, 0) + 1
            self.peak[node.resource] = max(self.peak.get(node.resource, 0), self.now[node.resource])
        time.sleep(0.03)
        super().run(node, ctx)
        with self.lock:
            self.now[node.resource] -= 1


def test_no_more_nodes_of_a_resource_class_run_at_once_than_its_limit(store, work):
    plan = Plan()
    for i in range(8):
        for resource in ("network", "docker"):
            n = write_node(f"write:{resource}{i}")
            plan.add(Node(n.id, n.kind, n.params, resource=resource))
    task = Concurrency(work)
    result = Executor(store, {"write": task}, limits={"network": 3, "docker": 1}, handle_signals=False).run(plan)
    assert result.outcome == "completed"
    assert task.peak == {"network": 3, "docker": 1}


def flaky_plan(fails: int) -> Plan:
    plan = Plan()
    plan.add(Node("fetch:flaky", "flaky", {"name": "flaky", "content": "ok\n", "fails": fails}, resource="network"))
    return plan


def test_a_transient_error_is_retried_with_backoff_until_the_node_succeeds(store, work):
    events: list[NodeEvent] = []
    plan = flaky_plan(fails=2)
    result = executor(store, work, on_event=events.append).run(plan)
    assert result.outcome == "completed"
    assert [e.state for e in events if e.state in ("retrying", "done")] == ["retrying", "retrying", "done"]
    assert store.history()[0]["counts"]["done"] == 1


def test_a_transient_error_that_persists_fails_the_node_after_a_bounded_number_of_attempts(store, work):
    plan = flaky_plan(fails=10)
    result = executor(store, work).run(plan)
    assert result.outcome == "failed"
    assert store.record(plan.plan_id, "fetch:flaky").attempts == FAST.attempts
    assert len((work / "flaky.tries").read_text().splitlines()) == FAST.attempts


def test_a_failing_node_stops_its_dependents_and_independent_branches_finish(store, work):
    plan = failing_plan()
    result = executor(store, work).run(plan)
    assert result.outcome == "failed"
    assert isinstance(result.failed["fetch:bad"], FetchError)  # the original exception, for the exit code
    assert result.exit_code == 40
    assert sorted(runs(work)) == ["write:x", "write:y"]
    records = store.records(plan.plan_id, plan.graph.nodes)
    assert records["fetch:bad"].state == "failed"
    assert records["fetch:bad"].error == "FetchError: registry said no"
    assert records["fetch:bad"].exit_code == 40
    assert records["write:after-bad"].state == "pending"
    assert store.current_plan_id() == plan.plan_id  # still in progress: resume retries the failed node


def test_a_failure_the_caller_halts_on_stops_the_nodes_running_beside_it_at_once(store, work):
    plan = stream_plan()  # 2 s when left alone
    plan.add(Node("fetch:bad", "fail", {"message": "the Target's own fault"}, resource="network"))
    started = time.monotonic()
    result = executor(store, work, halt_on=lambda error: isinstance(error, FetchError)).run(plan)
    assert result.outcome == "failed" and list(result.failed) == ["fetch:bad"]
    assert time.monotonic() - started < 1.0, "the stream beside the failure ran on"
    assert store.record(plan.plan_id, "fetch:stream").state == "pending", "stopped, its partial kept"


def test_a_node_that_finds_the_disk_full_fails_with_exit_code_41_whatever_it_was_writing(store, work):
    plan = Plan(meta={"target": "full-disk-target", "version": 9})
    plan.add(Node("install:app", "fail", {"errno": errno.ENOSPC}))
    result = executor(store, work).run(plan)
    assert result.exit_code == 41
    assert store.record(plan.plan_id, "install:app").exit_code == 41


def test_a_done_node_whose_effect_vanished_runs_again_on_resume_and_others_do_not(store, work):
    plan = failing_plan()
    executor(store, work).run(plan)
    (work / "out" / "write_x").unlink()  # the world changed behind the checkpoint's back
    result = executor(store, work).run()
    assert "write:x" in result.ran and "write:y" not in result.ran
    assert (work / "out" / "write_x").exists()


def test_an_effect_already_in_place_is_recorded_done_without_running_the_node(store, work):
    plan = diamond_plan()
    WriteFile(work).run(plan.node("write:a"), TaskContext(plan.node("write:a"), threading.Event()))
    result = executor(store, work).run(plan)
    assert "write:a" not in result.ran
    assert runs(work).count("write:a") == 1
    assert store.history()[0]["counts"]["done"] == len(plan)


def test_a_different_plan_is_refused_while_one_is_in_progress(store, work):
    executor(store, work).run(failing_plan())
    with pytest.raises(InvalidOngoingUpdateError):
        executor(store, work).run(diamond_plan())


def test_resuming_with_no_update_in_progress_is_an_error(store, work):
    with pytest.raises(NoUpdateInProgressError):
        executor(store, work).run()


def test_a_plan_naming_a_kind_no_task_implements_is_refused_before_any_side_effect(store, work):
    plan = diamond_plan()
    plan.add(Node("mystery:1", "mystery"))
    with pytest.raises(PlanError, match="mystery"):
        executor(store, work).run(plan)
    assert not (work / "runs.log").exists()
    assert store.current_plan_id() is None, "not frozen either"
    assert store.current_plan_id() is None  # not frozen: nothing blocks the next update


def test_a_cancel_request_stops_the_runner_at_the_next_node_boundary(store, work):
    plan = diamond_plan(sleep=0.05)
    cancelled = []

    def cancel_after_first(event: NodeEvent) -> None:
        if event.state == "done" and not cancelled:
            cancelled.append(event.node.id)
            store.request_cancel(plan.plan_id)

    result = executor(store, work, on_event=cancel_after_first, limits={"disk": 1}).run(plan)
    assert result.outcome == "cancelled"
    assert len(runs(work)) <= 2  # the first node, and at most one that started before the flag was seen
    assert store.current_plan_id() is None
    assert store.history()[0]["outcome"] == "cancelled"


def test_a_cancel_with_a_reason_keeps_it_in_history_and_shows_the_records_to_the_hook_first(store, work):
    plan = diamond_plan(sleep=0.05)
    seen: list[tuple[str, dict]] = []

    def cancel_after_first(event: NodeEvent) -> None:
        if event.state == "done":
            store.request_cancel(plan.plan_id, "superseded by test-target-8 (version 8)")

    result = executor(store, work, on_event=cancel_after_first, limits={"disk": 1},
                      on_cancelled=lambda p, records: seen.append((p.plan_id, records))).run(plan)
    assert result.outcome == "cancelled"
    assert seen and seen[0][0] == plan.plan_id
    assert seen[0][1]["write:a"].state == "done" and seen[0][1]["write:e"].state == "pending"
    assert store.history()[0]["reason"] == "superseded by test-target-8 (version 8)"


def test_until_runs_only_the_given_nodes_and_what_they_need_and_leaves_the_plan_in_progress(store, work):
    plan = diamond_plan()
    result = executor(store, work).run(plan, until={"write:d"})
    assert (result.outcome, result.exit_code) == ("paused", 0)
    assert sorted(runs(work)) == ["write:a", "write:b", "write:c", "write:d"]
    assert store.current_plan_id() == plan.plan_id, "still in progress"
    assert store.record(plan.plan_id, "write:e").state == "pending"

    result = executor(store, work).run()
    assert result.outcome == "completed"
    assert sorted(runs(work)) == sorted(n.id for n in plan.nodes()), "the rest ran, nothing twice"
    assert store.current_plan_id() is None


def test_until_a_node_the_plan_lacks_is_refused_before_anything_runs(store, work):
    with pytest.raises(PlanError, match="no node"):
        executor(store, work).run(diamond_plan(), until={"write:z"})
    assert not (work / "runs.log").exists()
    assert store.current_plan_id() is None, "not frozen either"


def test_the_progress_hook_hears_each_node_run_report_bytes_and_finish(store, work):
    events: list[NodeEvent] = []
    plan = diamond_plan()
    executor(store, work, on_event=events.append).run(plan)
    for node in plan.nodes():
        states = [e.state for e in events if e.node.id == node.id]
        assert states == ["running", "progress", "done"]
    progress = next(e for e in events if e.state == "progress")
    assert progress.done_bytes == len(progress.node.params["content"])


def committed_plan() -> Plan:
    """write:a -> write:commit (the point of no return) -> write:after -> fetch:bad (fails for good)."""
    plan = Plan(meta={"target": "committed-target", "version": 10})
    plan.add(write_node("write:a"))
    plan.add(dataclasses.replace(write_node("write:commit"), point_of_no_return=True), ["write:a"])
    plan.add(write_node("write:after"), ["write:commit"])
    plan.add(Node("fetch:bad", "fail", {"message": "registry said no"}, resource="network"), ["write:after"])
    return plan


def test_once_a_point_of_no_return_is_done_the_nodes_before_it_are_history_and_the_nodes_after_it_are_not(
        store, work):
    plan = committed_plan()
    assert executor(store, work).run(plan).outcome == "failed"
    for name in ("write_a", "write_commit", "write_after"):  # the world changed behind the checkpoint's back
        (work / "out" / name).unlink()
    events: list[NodeEvent] = []
    result = executor(store, work, on_event=events.append).run()
    assert result.ran == ["write:after", "fetch:bad"]
    assert not (work / "out" / "write_a").exists() and not (work / "out" / "write_commit").exists()
    assert {e.node.id for e in events if e.already} == {"write:a", "write:commit"}
    records = store.records(plan.plan_id, plan.graph.nodes)
    assert [records[n].state for n in ("write:a", "write:commit", "write:after")] == ["done"] * 3


def test_a_point_of_no_return_not_yet_done_protects_nothing(store, work):
    plan = Plan(meta={"target": "uncommitted-target", "version": 11})
    plan.add(write_node("write:a"))
    plan.add(Node("fetch:bad", "fail", {"message": "registry said no"}, resource="network"), ["write:a"])
    plan.add(dataclasses.replace(write_node("write:commit"), point_of_no_return=True), ["fetch:bad"])
    assert executor(store, work).run(plan).outcome == "failed"
    (work / "out" / "write_a").unlink()
    assert "write:a" in executor(store, work).run().ran


def stream_plan() -> Plan:
    plan = Plan(meta={"target": "stream-target", "version": 12})
    plan.add(stream_node("fetch:stream", chunks=200, delay=0.01))  # 2 s when left alone
    return plan


def run_stopped(ex: Executor, plan: Plan, stop) -> tuple[object, float]:
    """Run `plan`, calling `stop` 0.3 s in; returns the result and how long the run took."""
    timer = threading.Timer(0.3, stop)
    timer.start()
    started = time.monotonic()
    try:
        return ex.run(plan), time.monotonic() - started
    finally:
        timer.cancel()


def test_a_signal_stops_a_stream_at_its_next_chunk_and_resume_goes_on_from_what_it_kept(store, work):
    plan = stream_plan()
    ex = executor(store, work)
    result, took = run_stopped(ex, plan, lambda: ex.stop(signal.SIGTERM))
    assert (result.outcome, result.exit_code) == ("interrupted", 143)
    assert took < 1.0, f"the stream ran on for {took:.2f} s after the signal"
    assert store.record(plan.plan_id, "fetch:stream").state == "pending"
    kept = (work / "out" / "fetch_stream.part").read_text().splitlines()
    assert 0 < len(kept) < 200
    assert executor(store, work).run().outcome == "completed"
    assert (work / "out" / "fetch_stream").read_text().splitlines() == [str(i) for i in range(200)]


def test_a_cancel_stops_a_stream_at_its_next_chunk(store, work):
    plan = stream_plan()
    result, took = run_stopped(executor(store, work), plan, lambda: store.request_cancel(plan.plan_id))
    assert result.outcome == "cancelled" and took < 1.0
    assert store.history()[0]["counts"]["done"] == 0


def test_a_task_waiting_is_woken_by_a_stop_request_and_told_so():
    stop = threading.Event()
    ctx = TaskContext(Node("healthy:app", "healthy"), stop)
    ctx.sleep(0.01)  # nothing asked: it just waits
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        ctx.sleep(30)
    assert time.monotonic() - started < 1.0
