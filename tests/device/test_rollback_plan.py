"""What follows a failed update, decided on plans compiled from app trees (no engine, no registry):
which failures hand the update over, and the rollback plan that undoes exactly what it did."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fioup_flow.badtargets import BadTargets
from fioup_flow.checkpoint import Attempt, CheckpointStore, NodeRecord
from fioup_flow.composeapp import AppTree, Blob, Expectation, Image
from fioup_flow.graph import Plan
from fioup_flow.planner import Observed, compile_update
from fioup_flow.rollback import Rollbacks, is_rollback
from fioup_flow.targets import App, Target

WINDOW_S = 7.0


def tree(app: str, version: str) -> AppTree:
    def blob(kind: str, what: str) -> Blob:
        return Blob(f"hub.test/f/{app}@sha256:{hashlib.sha256(f'{app}{version}{what}'.encode()).hexdigest()}", 10, kind)

    manifest = blob("app-manifest", "manifest")
    image = Image(blob("image-manifest", "image").uri, blob("image-manifest", "image"), blob("image-manifest", "image"),
                  blob("image-config", "config"), (blob("layer", "layer"),))
    return AppTree(app, manifest.uri, manifest, blob("bundle", "bundle"), None, {"main": image},
                   expect={"main": Expectation()})


TREES = {(app, v): tree(app, v) for app, v in [("web", "1"), ("web", "2"), ("pair", "1"), ("crash", "1"), ("keep", "1")]}
V1 = Target("dev-1", 1, tuple(App(a, TREES[a, "1"].uri) for a in ("keep", "pair", "web")), {})
V2 = Target("dev-2", 2, (App("crash", TREES["crash", "1"].uri), App("keep", TREES["keep", "1"].uri),
                         App("web", TREES["web", "2"].uri)), {})


def trees_of(target: Target) -> dict[str, AppTree]:
    return {a.name: next(t for t in TREES.values() if t.uri == a.uri) for a in target.apps}


def update(current: Target | None, target: Target) -> Plan:
    up = {a.name: True for a in current.apps} if current else {}
    return compile_update(Observed(current, up), target, trees_of(target), prune_all_images=False,
                          health_window=WINDOW_S)


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "checkpoint")


def rollbacks(store: CheckpointStore, current: Target | None, down: frozenset[str] = frozenset()) -> Rollbacks:
    return Rollbacks(store, lambda: current, trees_of, lambda t: t.name not in down, health_window=WINDOW_S,
                     prune_all_images=False)


def failed(store: CheckpointStore, plan: Plan, node_prefix: str, permanent: bool, *tried: str) -> Attempt:
    """`plan` frozen, the nodes `tried` done, and its attempt failed at the node named by `node_prefix`."""
    store.freeze(plan)
    for prefix in tried:
        node = next(n for n in plan.graph.nodes if n.startswith(prefix))
        store.put_record(plan.plan_id, node, NodeRecord("done", 1))
    node = next(n for n in plan.graph.nodes if n.startswith(node_prefix))
    return store.fail_attempt(plan.plan_id, node, f"{node}: it broke", permanent)


def test_the_rollback_undoes_exactly_what_the_update_did(store) -> None:
    plan = update(V1, V2)
    attempt = failed(store, plan, "healthy:crash", True, "install:web", "start:web", "stop:pair", "start:crash")
    assert rollbacks(store, V1).after_failure(plan, attempt) == "rolled-back"
    back = store.current_plan()
    assert is_rollback(back) and back.meta["rollback_of"] == plan.plan_id and "it broke" in back.meta["reason"]
    assert (back.meta["target"], back.meta["from_target"]) == ("dev-1", "dev-2")
    assert back.meta["diff"] == {"add": ["pair"], "remove": ["crash"], "update": ["web"], "keep": ["keep"], "repair": []}
    nodes = set(back.graph.nodes)
    web_v1 = TREES['web', '1'].uri.rsplit('@')[1]
    assert {"stop:crash", f"install:web@{web_v1}", f"start:web@{web_v1}",
            f"install:pair@{TREES['pair', '1'].uri.rsplit('@')[1]}", "commit:dev-1"} <= nodes
    assert not any(n.startswith(("install:keep", "stop:keep", "start:keep")) for n in nodes), "untouched apps stay so"
    assert back.node("stop:crash").params["keep"] == [], "an app the update added is taken down"
    assert "stop:web" not in nodes, "an app going back a version is replaced by its start's compose up"
    healthy = next(n for n in back.nodes() if n.id.startswith("healthy:web"))
    assert healthy.params["window_s"] == WINDOW_S
    init = next(n for n in back.nodes() if n.params.get("event") == "UpdateInitStarted")
    assert init.params["details"]["kind"] == "rollback" and init.params["details"]["rollback_of"] == plan.plan_id
    (entry,) = store.history()
    assert (entry["plan_id"], entry["outcome"]) == (plan.plan_id, "rolled-back")
    assert BadTargets(store).reason("dev-2").endswith("it broke")


def test_an_unchanged_app_that_is_not_up_is_repaired_by_the_rollback(store) -> None:
    plan = update(V1, V2)
    attempt = failed(store, plan, "healthy:crash", True, "start:web")
    rollbacks(store, V1, down=frozenset({"keep"})).after_failure(plan, attempt)
    assert store.current_plan().meta["diff"]["repair"] == ["keep"]


def test_a_transient_failure_leaves_the_update_in_progress_and_the_target_unmarked(store) -> None:
    plan = update(V1, V2)
    attempt = failed(store, plan, "fetch:", False)
    assert rollbacks(store, V1).after_failure(plan, attempt) is None
    assert store.current_plan().plan_id == plan.plan_id and store.bad_targets() == {}


def test_a_permanent_failure_before_anything_changed_ends_the_update_with_nothing_to_undo(store) -> None:
    plan = update(V1, V2)
    attempt = failed(store, plan, "install:web", True)  # a failed install left the project as it was
    assert rollbacks(store, V1).after_failure(plan, attempt) == "failed"
    assert store.current_plan() is None and store.history()[0]["outcome"] == "failed"
    assert BadTargets(store).is_bad("dev-2")


def test_a_first_install_has_nothing_to_go_back_to(store) -> None:
    plan = update(None, V1)
    attempt = failed(store, plan, "healthy:web", True, "start:web")
    assert rollbacks(store, None).after_failure(plan, attempt) == "failed"
    assert store.current_plan() is None and BadTargets(store).is_bad("dev-1")


def test_a_sync_of_the_running_target_is_not_handed_over_nor_its_target_marked(store) -> None:
    plan = update(V1, V1)
    attempt = failed(store, plan, "report:", True)
    assert rollbacks(store, V1).after_failure(plan, attempt) is None
    assert store.bad_targets() == {}


def test_a_rollback_that_fails_is_not_rolled_back(store) -> None:
    plan = update(V1, V2)
    rollbacks(store, V1).after_failure(plan, failed(store, plan, "healthy:crash", True, "start:web"))
    back = store.current_plan()
    attempt = store.fail_attempt(back.plan_id, "start:web", "start:web: it broke too", True)
    assert rollbacks(store, V1).after_failure(back, attempt) is None
    assert store.current_plan().plan_id == back.plan_id
