"""Bad Targets: remembered durably, skipped as "the latest", refused by version unless forced; only a
failure of the Target's own marks it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fioup_flow.badtargets import BadTargets, choose, entry, is_permanent
from fioup_flow.checkpoint import CheckpointStore
from fioup_flow.errors import (
    BadTargetError,
    FetchError,
    InstallError,
    NoMatchingTargetError,
    NoSpaceError,
    StartError,
    StopError,
)
from fioup_flow.graph import Plan
from fioup_flow.store import DigestMismatchError
from fioup_flow.targets import Target
from fioup_flow.task import Node, TransientError

V1, V2, V3 = (Target(f"dev-{v}", v, (), {}) for v in (1, 2, 3))


def one_node_plan(target: Target, **meta) -> Plan:
    plan = Plan(meta={"target": target.name, "version": target.version, **meta})
    plan.add(Node(f"report:UpdateInitStarted:{plan.plan_id}", "report"))
    return plan


def test_a_mark_is_durable_with_its_reason_and_a_clear_forgets_it(tmp_path: Path) -> None:
    bad = BadTargets(CheckpointStore(tmp_path / "checkpoint"))
    bad.mark(V2, "app web restarted in its health window", "plan-2")
    again = BadTargets(CheckpointStore(tmp_path / "checkpoint"))
    assert again.is_bad("dev-2") and not again.is_bad("dev-1")
    assert again.reason("dev-2") == "app web restarted in its health window"
    (only,) = again.all()
    assert (only.name, only.version, only.plan_id) == ("dev-2", 2, "plan-2")
    again.clear("dev-2")
    assert not BadTargets(CheckpointStore(tmp_path / "checkpoint")).is_bad("dev-2")
    assert again.reason("dev-2") is None


def test_the_newest_mark_comes_first(tmp_path: Path) -> None:
    bad = BadTargets(CheckpointStore(tmp_path / "checkpoint"))
    bad.mark(V2, "first", "p2")
    bad.mark(V3, "second", "p3")
    assert [b.name for b in bad.all()] == ["dev-3", "dev-2"]


def test_hand_over_ends_the_update_marks_its_target_and_freezes_the_next_plan_in_one_go(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "checkpoint")
    failed = store.freeze(one_node_plan(V2))
    rollback = one_node_plan(V1, kind="rollback", rollback_of=failed.plan_id)
    entry_ = store.hand_over(failed, "rolled-back", "web crashed", entry(V2, "web crashed", failed.plan_id), rollback)
    assert entry_["outcome"] == "rolled-back" and entry_["reason"] == "web crashed"
    reopened = CheckpointStore(tmp_path / "checkpoint")
    assert reopened.current_plan().plan_id == rollback.plan_id
    assert reopened.current_plan().meta["kind"] == "rollback"
    assert reopened.history(1)[0]["plan_id"] == failed.plan_id
    assert BadTargets(reopened).reason("dev-2") == "web crashed"


def test_a_hand_over_that_fails_midway_leaves_the_failed_update_in_progress_and_nothing_marked(
        tmp_path: Path, monkeypatch) -> None:
    store = CheckpointStore(tmp_path / "checkpoint")
    failed = store.freeze(one_node_plan(V2))
    rollback = one_node_plan(V1, kind="rollback")

    def cut(*_args) -> None:  # the last write of the transaction fails, as a power cut would end it
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_put_plan", cut)
    with pytest.raises(Exception):
        store.hand_over(failed, "rolled-back", "web crashed", entry(V2, "web crashed", failed.plan_id), rollback)
    reopened = CheckpointStore(tmp_path / "checkpoint")
    assert reopened.current_plan().plan_id == failed.plan_id
    assert reopened.history() == [] and reopened.bad_targets() == {}


@pytest.mark.parametrize("error, permanent", [
    (DigestMismatchError("layer does not match its digest"), True),
    (InstallError("the bundle escapes its project"), True),
    (StartError("web restarted in its health window"), True),
    (FetchError("registry out of reach"), False),
    (NoSpaceError("the disk is full"), False),
    (type("Refused", (StartError, TransientError), {})("port taken"), False),
    (type("LoadFailed", (InstallError, TransientError), {})("engine refused the image"), False),
    (OSError(28, "No space left on device"), False),
    (StopError("compose stop failed"), False),
    (RuntimeError("a bug"), False),
])
def test_only_a_failure_of_the_target_s_own_is_permanent(error: BaseException, permanent: bool) -> None:
    assert is_permanent(error) is permanent


def test_the_latest_target_that_is_not_bad_is_chosen_and_a_newer_one_is_tried(tmp_path: Path) -> None:
    bad = BadTargets(CheckpointStore(tmp_path / "checkpoint"))
    bad.mark(V2, "crash loop", "p2")
    assert choose([V1, V2], None, bad, current="dev-1") == V1
    assert choose([V1, V2, V3], None, bad, current="dev-1") == V3


def test_a_bad_target_asked_for_by_version_is_refused_with_the_way_to_force_it(tmp_path: Path) -> None:
    bad = BadTargets(CheckpointStore(tmp_path / "checkpoint"))
    bad.mark(V2, "crash loop", "p2")
    with pytest.raises(BadTargetError, match=r"crash loop.*apply 2 --force") as refused:
        choose([V1, V2], 2, bad, current="dev-1")
    assert refused.value.exit_code == 9
    assert choose([V1, V2], 2, bad, force=True, current="dev-1") == V2


def test_the_target_the_device_runs_is_never_passed_over(tmp_path: Path) -> None:
    bad = BadTargets(CheckpointStore(tmp_path / "checkpoint"))
    bad.mark(V2, "crash loop", "p2")
    assert choose([V1, V2], None, bad, current="dev-2") == V2
    assert choose([V1, V2], 2, bad, current="dev-2") == V2


def test_every_target_bad_says_so(tmp_path: Path) -> None:
    bad = BadTargets(CheckpointStore(tmp_path / "checkpoint"))
    bad.mark(V1, "crash loop", "p1")
    with pytest.raises(NoMatchingTargetError, match="not marked bad"):
        choose([V1], None, bad)
