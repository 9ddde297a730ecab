"""Attempts at a plan: a new one only after a run that ended failed, recorded durably, never on a cut."""

from __future__ import annotations

from pathlib import Path

from fioup_flow.checkpoint import Attempt, CheckpointStore
from fioup_flow.graph import Plan
from fioup_flow.task import Node


def frozen(tmp_path: Path) -> tuple[CheckpointStore, Plan]:
    store = CheckpointStore(tmp_path / "checkpoint")
    plan = Plan()
    plan.add(Node("report:UpdateInitStarted:e1", "report"))
    return store, store.freeze(plan)


def test_the_first_attempt_begins_when_the_plan_is_frozen_under_the_plan_s_id(tmp_path: Path) -> None:
    store, plan = frozen(tmp_path)
    assert store.attempt(plan.plan_id) == Attempt(1, plan.plan_id)


def test_a_run_after_a_failed_run_begins_the_next_attempt_with_a_fresh_correlation_id(tmp_path: Path) -> None:
    store, plan = frozen(tmp_path)
    failed = store.fail_attempt(plan.plan_id, "fetch:x", "fetch:x: cannot connect")
    assert failed.number == 1 and failed.failed == {"node": "fetch:x", "error": "fetch:x: cannot connect"}
    second = store.begin_attempt(plan.plan_id)
    assert second.number == 2 and second.correlation_id != plan.plan_id and second.failed is None
    reopened = CheckpointStore(tmp_path / "checkpoint")
    assert reopened.attempt(plan.plan_id) == second, "durable before the attempt's first report"


def test_a_run_cut_short_goes_on_with_the_same_attempt(tmp_path: Path) -> None:
    store, plan = frozen(tmp_path)
    store.fail_attempt(plan.plan_id, "start:a", "start:a: port in use")
    second = store.begin_attempt(plan.plan_id)
    # a power cut or a signal ends a run without failing it: the next run begins nothing new
    assert store.begin_attempt(plan.plan_id) == second
    assert CheckpointStore(tmp_path / "checkpoint").begin_attempt(plan.plan_id) == second


def test_the_history_says_how_many_attempts_an_update_took_and_the_last_one_s_id(tmp_path: Path) -> None:
    store, plan = frozen(tmp_path)
    store.fail_attempt(plan.plan_id, "start:a", "error")
    second = store.begin_attempt(plan.plan_id)
    entry = store.finish(plan, "completed")
    assert entry["attempts"] == 2 and entry["correlation_id"] == second.correlation_id
    assert store.attempt(plan.plan_id) == Attempt(1, plan.plan_id), "nothing of it is left in the store"
