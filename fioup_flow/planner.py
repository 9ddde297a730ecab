"""The compiler: from what runs now and the chosen Target to the graph of an update.

Pure: it reads only the data it is given (the installed Target, which apps are up, the app
trees) and returns a Plan; every side effect belongs to the tasks the plan names. The shape:

    UpdateInitStarted -> UpdateInitCompleted -> EcuDownloadStarted -> space check
      -> fetch (one node per blob, in parallel) -> EcuDownloadCompleted
      -> EcuInstallationStarted -> EcuInstallationApplied -> start (per app: `compose up`, which
      replaces the old version's containers) or stop (per app that leaves: `compose down`)
      -> healthy (per app started: up, then staying up through the health window) -> commit
      -> EcuInstallationCompleted -> prune -> apps-states

with install (per app: images loaded, project unpacked, while the old version still runs)
after that app's own fetches and before EcuInstallationApplied; or, with
`install_after_download` (an offline bundle, whose damaged blob must install nothing), after
every fetch.

An app whose URI does not change is never stopped or restarted; one that should run but is not
up gets install and start nodes (a repair).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Callable

from fioup_flow.composeapp import AppTree
from fioup_flow.graph import Plan, new_plan_id
from fioup_flow.targets import Target
from fioup_flow.task import Node
from tasks import commit, fetch, install, prune, report, space, start, stop


@dataclass(frozen=True)
class Observed:
    """What the device runs, as seen before planning."""

    current: Target | None
    apps_up: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class AppDiff:
    add: tuple[str, ...]
    remove: tuple[str, ...]
    update: tuple[str, ...]
    keep: tuple[str, ...]
    repair: tuple[str, ...]  # kept, but not up: installed again if needed and started, never stopped

    @property
    def to_install(self) -> tuple[str, ...]:
        return tuple(sorted(self.add + self.update + self.repair))

    @property
    def to_stop(self) -> tuple[str, ...]:
        return tuple(sorted(self.update + self.remove))


def diff_apps(current: Target | None, target: Target, apps_up: dict[str, bool]) -> AppDiff:
    before = {a.name: a.uri for a in current.apps} if current else {}
    after = {a.name: a.uri for a in target.apps}
    same = sorted(n for n in after if before.get(n) == after[n])
    return AppDiff(
        add=tuple(sorted(set(after) - set(before))),
        remove=tuple(sorted(set(before) - set(after))),
        update=tuple(sorted(n for n in after if n in before and before[n] != after[n])),
        keep=tuple(n for n in same if apps_up.get(n, False)),
        repair=tuple(n for n in same if not apps_up.get(n, False)),
    )


def actions_details(current: Target | None, target: Target, diff: AppDiff) -> dict:
    before = {a.name: a.uri for a in current.apps} if current else {}
    after = {a.name: a.uri for a in target.apps}
    return {
        "from_target": current.name if current else "",
        "to_target": target.name,
        "type": "sync" if current and current.name == target.name else "update",
        "actions": {
            "add": [after[n] for n in diff.add],
            "remove": [before[n] for n in diff.remove],
            "sync": [after[n] for n in diff.keep + diff.repair],
            "update": {"from": [before[n] for n in diff.update], "to": [after[n] for n in diff.update]},
        },
    }


class PlanBuilder:
    """Adds nodes in order, each after the nodes named; keeps the compiler below readable."""

    def __init__(self, plan: Plan, new_id: Callable[[], str]):
        self.plan = plan
        self.new_id = new_id

    def add(self, node: Node, after: list[str] | tuple[str, ...] = ()) -> str:
        self.plan.add(node, after=list(after))
        return node.id

    def event(self, event_type: str, target: Target, after: list[str], success: bool | None = None,
              details: dict | None = None) -> str:
        return self.add(report.event_node(event_type, self.new_id(), self.plan.plan_id, target.name, target.version,
                                          success, details), after)


def compile_update(observed: Observed, target: Target, trees: dict[str, AppTree], *, prune_all_images: bool,
                   health_window: float, purpose: dict | None = None,
                   new_id: Callable[[], str] = lambda: str(uuid.uuid4()), source: dict | None = None,
                   install_after_download: bool = False) -> Plan:
    """The plan that takes the device from `observed` to `target` (already narrowed to enabled apps).

    Each app it starts must stay up `health_window` seconds before the commit. `purpose` (e.g.
    `{"kind": "rollback", "rollback_of": ..., "reason": ...}`) goes into the plan's meta and the
    details of its UpdateInitStarted, so that the gateway and `status` can tell why it runs.
    `source`, where its blobs come from when not from the registries, is kept in its meta too.
    """
    diff = diff_apps(observed.current, target, observed.apps_up)
    plan = Plan(plan_id=new_plan_id(), meta={
        "target": target.name, "version": target.version,
        "from_target": observed.current.name if observed.current else None,
        "apps": {a.name: a.uri for a in target.apps},
        "diff": {k: list(getattr(diff, k)) for k in ("add", "remove", "update", "keep", "repair")},
        **({"source": source} if source else {}),
        **(purpose or {}),
    })
    b = PlanBuilder(plan, new_id)
    blobs = {blob.digest: blob for name in diff.to_install for blob in trees[name].blobs()}
    total = sum(blob.size for blob in blobs.values())

    init = b.event("UpdateInitStarted", target, [],
                   details=dict(actions_details(observed.current, target, diff), **(purpose or {})))
    init_done = b.event("UpdateInitCompleted", target, [init], True,
                        {"total_to_fetch": {"bytes": total, "blobs": len(blobs)}})
    download = b.event("EcuDownloadStarted", target, [init_done],
                       details={"total_to_be_fetched": {"bytes": total, "blobs": len(blobs)}})
    usage = {d: u for name in diff.to_install for d, u in trees[name].layer_usage.items()}
    room = b.add(space.node(target.name, [(d, bl.size, bl.kind, usage.get(d)) for d, bl in sorted(blobs.items())]),
                 [download])
    fetches = {d: b.add(fetch.node(bl.uri, bl.size, bl.kind), [room]) for d, bl in sorted(blobs.items())}
    downloaded = b.event("EcuDownloadCompleted", target, list(fetches.values()) or [room], True)

    installing = b.event("EcuInstallationStarted", target, [downloaded], details={"actions": {
        "stop": list(diff.to_stop), "install": list(diff.to_install), "prune": list(diff.remove)}})
    # An app installs as soon as its own blobs are in: loading images overlaps the other downloads.
    def fetched(name: str) -> list[str]:
        return [downloaded] if install_after_download else [fetches[x.digest] for x in trees[name].blobs()] or [room]

    installs = {name: b.add(install.node(name, trees[name].uri, sum(x.size for x in trees[name].blobs())),
                            fetched(name)) for name in diff.to_install}
    applied = b.event("EcuInstallationApplied", target, [installing, *installs.values()])

    # An app that leaves is taken down. One that changes version is replaced by its start node's
    # `compose up`, which stops each old container only as it recreates it, as compose itself
    # does: a `compose stop` before it kept the app down while another compose started and read
    # the project (a third of each app's downtime, `scripts/bench-apply`).
    stops = [b.add(stop.node(name), [applied]) for name in diff.remove]
    started = {name: b.add(start.node_for(trees[name]), [applied]) for name in diff.to_install}
    healthy = [b.add(start.healthy_node_for(trees[name], health_window), [started[name]]) for name in diff.to_install]
    committed = b.add(commit.node(target), healthy + stops or [applied])
    completed = b.event("EcuInstallationCompleted", target, [committed], True)
    pruned = b.add(prune.node(target.name, {a.name: a.uri for a in target.apps}, prune_all_images), [completed])
    b.add(report.apps_states_node(new_id()), [pruned])
    plan.validate()
    return plan


def fetched_blobs(plan: Plan) -> dict[str, int]:
    """Every blob `plan` fetches: digest -> size."""
    return {n.params["uri"].rsplit("@", 1)[1]: n.size for n in plan.nodes() if n.kind == fetch.KIND}
