"""What follows an update that failed: a retry, or a rollback to the Target the device ran.

Called by the agent when a run of a plan ended failed (or, after a power cut, when a run finds
the plan in progress failed before). The engine knows nothing of rollbacks: a rollback is a plan
of its own, compiled by the planner like any update, from the failed Target (as if it ran) back
to the committed one: updated apps return to their previous version, added apps are removed,
removed apps come back; the previous version's blobs and images are still there, since only a
commit prunes. Its meta says `kind: rollback`, `rollback_of` (the failed plan's id) and `reason`.

- A transient failure (`badtargets.is_permanent` false: a registry or the gateway out of reach, a
  full disk, ...) changes nothing here: the update stays in progress and is tried again.
- A permanent failure of an update from a committed Target to another ends the update, marks its
  Target bad and, if the update changed anything (an app installed, stopped or started), freezes
  the rollback plan, all in one transaction (`CheckpointStore.hand_over`): a power cut anywhere
  leaves either the failed update in progress (the next run hands over again) or the rollback.
  With nothing changed, the update just ends "failed" (exit code of its failed node).
- A first install has no Target to go back to: it ends "failed", its Target bad, its apps as they
  are. A sync of the Target the device runs (a repair) stays in progress: that Target is not bad.
- A rollback that fails is not rolled back: it stays in progress with its failure, and `resume`
  tries it again (exit 111).

For the gateway the rollback is an update of its own, as aktualizr-lite re-installs the previous
Target after a failed install (`AkliteClientExt::PullAndInstall`, `src/aklite_client_ext.cc`):
the failed update ends with `EcuInstallationCompleted` `success: false` (its reason and the
state of each service of the apps it started, within the events' 2 KiB of details, keeping the
error's tail as aktualizr-lite's `DetailedInstallCompletedReport` does), then the rollback sends
the whole sequence for the previous Target under its own correlation id, its
`UpdateInitStarted` details naming `kind: rollback`, `rollback_of` and `reason`, and ends with
apps-states.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from fioup_flow import badtargets
from fioup_flow.checkpoint import Attempt, CheckpointStore
from fioup_flow.composeapp import AppTree
from fioup_flow.errors import FioupFlowError, RollbackFailedError, RolledBackError
from fioup_flow.events import DETAILS_MAX
from fioup_flow.graph import Plan
from fioup_flow.ongoing import to_another_target
from fioup_flow.planner import Observed, compile_update
from fioup_flow.targets import App, Target
from tasks import appstate, install, start, stop

log = logging.getLogger(__name__)

ROLLBACK = "rollback"
ERROR_TAIL = 1024  # of an error too long for the details, the end is kept (as aktualizr-lite does)
TRUNCATED = "\n[TRUNCATED]\n"

Trees = Callable[[Target], dict[str, AppTree]]
IsUp = Callable[[AppTree], bool]


def is_rollback(plan: Plan) -> bool:
    return plan.meta.get("kind") == ROLLBACK


def failed_target(plan: Plan) -> Target:
    """The Target a plan goes to, as its meta names it (already narrowed to the enabled apps)."""
    apps = tuple(App(name, uri) for name, uri in sorted(plan.meta.get("apps", {}).items()))
    return Target(plan.meta["target"], int(plan.meta["version"]), apps, {})


def changed_anything(plan: Plan, checkpoint: CheckpointStore) -> bool:
    """Whether the plan installed an app (its project folder was swapped), or tried to stop or start
    one (what runs may have changed), as its node records say. An install that failed left the
    project as it was (it unpacks beside it and swaps last)."""
    nodes = [n for n in plan.nodes() if n.kind in (install.KIND, stop.KIND, start.START)]
    records = checkpoint.records(plan.plan_id, [n.id for n in nodes])
    return any(records[n.id].state == "done" if n.kind == install.KIND
               else records[n.id].state != "pending" or records[n.id].attempts > 0 for n in nodes)


class Rollbacks:
    """Decides and freezes what follows a failed update (see the module's docstring)."""

    def __init__(self, checkpoint: CheckpointStore, current: Callable[[], Target | None], trees: Trees, is_up: IsUp,
                 *, health_window: float, prune_all_images: bool):
        self.checkpoint = checkpoint
        self.current = current
        self.trees = trees
        self.is_up = is_up
        self.health_window = health_window
        self.prune_all_images = prune_all_images

    def after_failure(self, plan: Plan, attempt: Attempt) -> str | None:
        """Hand a failed update over, if its failure was permanent: returns the history outcome
        ("rolled-back": the rollback plan is now the plan in progress; "failed": nothing is), or
        None when the update stays in progress (a transient failure, a sync, a rollback)."""
        failure = attempt.failed or {}
        previous = self.current()
        if (not failure.get("permanent") or not to_another_target(plan)
                or (previous is not None and previous.name == plan.meta.get("target"))):  # committed: too late
            return None
        target, reason = failed_target(plan), failure["error"]
        bad = badtargets.entry(target, reason, plan.plan_id)
        if previous is None or not changed_anything(plan, self.checkpoint):
            self.checkpoint.hand_over(plan, "failed", reason, bad)
            log.info("update to %s failed for good (%s); the Target is marked bad", target.name, reason)
            return "failed"
        rollback = self.compile(plan, target, previous, reason)
        self.checkpoint.hand_over(plan, "rolled-back", reason, bad, rollback)
        log.info("update to %s failed for good (%s): the Target is marked bad, rolling back to %s",
                  target.name, reason, previous.name)
        return "rolled-back"

    def compile(self, plan: Plan, failed: Target, previous: Target, reason: str) -> Plan:
        """The plan from the failed Target, as if it ran, back to `previous`."""
        trees = self.trees(previous)
        unchanged = {a.name for a in previous.apps if failed.app(a.name) == a}
        up = {name: self.is_up(trees[name]) for name in unchanged}
        return compile_update(Observed(failed, up), previous, trees, prune_all_images=self.prune_all_images,
                              health_window=self.health_window,
                              purpose={"kind": ROLLBACK, "rollback_of": plan.plan_id, "reason": reason},
                              source=plan.meta.get("source"))  # an offline update's rollback stays offline


class EndedFailure(FioupFlowError):
    """The failure of an earlier run, handed over only now (a power cut came between the two): its
    message and exit code, from the records, the exception being gone."""

    def __init__(self, message: str, exit_code: int | None):
        super().__init__(message)
        self.exit_code = exit_code or FioupFlowError.exit_code


def failure_details(base: dict[str, Any], error: str, services: dict[str, list[appstate.ServiceState]]) -> dict[str, Any]:
    """The details of a failed update's last event: `base` (storage figures), the error and, per app
    the update started, each service's state, within the events' details limit. When room runs
    short the services go first, then the error's middle (its head and tail are kept)."""
    states = {app: {s.name: describe(s) for s in found} for app, found in sorted(services.items())}
    for details in (dict(base, error=error, services=states), dict(base, error=error)):
        if len(json.dumps(details, sort_keys=True)) <= DETAILS_MAX:
            return details
    room = DETAILS_MAX - len(json.dumps(dict(base, error=TRUNCATED), sort_keys=True))
    tail = min(ERROR_TAIL, room // 2)
    head = room - tail
    while True:  # JSON escapes may make the text longer than its characters: shrink until it fits
        details = dict(base, error=error[:head] + TRUNCATED + (error[-tail:] if tail else ""))
        if len(json.dumps(details, sort_keys=True)) <= DETAILS_MAX or not head + tail:
            return details
        head, tail = head * 3 // 4, tail * 3 // 4


def describe(state: appstate.ServiceState) -> str:
    """One service in a few words: `restarting, exit 1, 3 restarts`, `running (healthy)`, `exited 0`."""
    words = state.state + (f" ({state.health})" if state.health else "")
    if state.state != "running":
        words += f", exit {state.exit_code}"
    if state.restarts:
        words += f", {state.restarts} restarts"
    return words + (f", {state.error}" if state.error else "")


def started_apps(plan: Plan) -> list[str]:
    """The apps a plan installs and starts: those whose state the failure report describes."""
    diff = plan.meta.get("diff", {})
    return sorted(set(diff.get("add", [])) | set(diff.get("update", [])) | set(diff.get("repair", [])))


def outcome_error(checkpoint: CheckpointStore, plan_id: str, failed: bool) -> FioupFlowError | None:
    """The error a command ends with after a run of plan `plan_id` that was a rollback: 110 (done:
    the device runs its previous Target again) or 111 (failed); None for any other plan."""
    if failed:
        plan = checkpoint.current_plan()
        if plan is None or plan.plan_id != plan_id or not is_rollback(plan):
            return None
        return RollbackFailedError(
            f"the update to {plan.meta.get('from_target')} failed ({plan.meta.get('reason')}), and so did its "
            f"rollback to {plan.meta['target']}; `fioup-flow resume` tries the rollback again")
    history = checkpoint.history()
    entry = next((e for e in history if e["plan_id"] == plan_id), None)
    if entry is None or entry.get("kind") != ROLLBACK:
        return None
    failed_update = next((e for e in history if e["plan_id"] == entry.get("rollback_of")), {})
    return RolledBackError(
        f"the update to {failed_update.get('target')} failed and was rolled back: the device runs "
        f"{entry['target']} (version {entry['version']}) again, and {failed_update.get('target')} is marked bad "
        f"({failed_update.get('reason')}); `fioup-flow apply {failed_update.get('version')} --force` tries it again")



def ended_note(checkpoint: CheckpointStore, plan_id: str) -> str | None:
    """What to tell after a failed run whose update was ended at once (a permanent failure with
    nothing to undo): its Target is bad now. None if the update is still in progress."""
    entry = next((e for e in checkpoint.history(5) if e["plan_id"] == plan_id and e["outcome"] == "failed"), None)
    if entry is None:
        return None
    return (f"Update {plan_id} to {entry['target']} ended: the failure is the Target's own, so {entry['target']} is "
            f"marked bad and not tried again; `fioup-flow apply {entry['version']} --force` tries it again")
