"""Whether an update in progress may go on, judged against the Targets verified just now.

A plan is frozen when the update starts and a resume runs it as frozen. Meanwhile the factory may
have withdrawn its Target (`fioctl targets prune`) or published it again with other apps. An
update that has not yet changed what runs (no app stopped or started) is cancelled then, with
the reason; one that has is finished without a look, as a half-done update is worse than one to
a withdrawn Target.
Offline nothing can be judged, and the frozen plan goes on: that is what a device at boot needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from fioup_flow.checkpoint import NodeRecord
from fioup_flow.graph import Plan
from fioup_flow.targets import Target
from tasks import report, start, stop

# the nodes that change what runs; until one of them was tried, cancelling leaves the device as it was
CHANGES_WHAT_RUNS = (stop.KIND, start.START)


@dataclass(frozen=True)
class Verdict:
    """What to do with the update in progress: cancel it (`cancel` says why), or go on; `note` says
    why it goes on unchecked (the Targets could not be refreshed)."""

    cancel: str | None = None
    note: str | None = None


def to_another_target(plan: Plan) -> bool:
    """Whether `plan` takes the device to another Target: not a sync or a restore of the Target it
    runs (that brings back what is installed, even if the factory dropped that Target), nor a
    rollback (that brings back what the device ran, whatever the factory lists now). Only such an
    update may be cancelled for the Targets, held for an install window, given up after failed
    attempts, or rolled back."""
    return plan.meta.get("target") != plan.meta.get("from_target") and plan.meta.get("kind") != "rollback"


def cancellable(plan: Plan, records: dict[str, NodeRecord]) -> bool:
    """Whether the Targets are worth checking again for this update: it goes to another Target
    (`to_another_target`), and it changed nothing that runs yet: no stop or start node was ever
    tried (the node records say). Once one was, the update is finished without a look, which also
    keeps a boot after a cut between stop and start as quick as it can be."""
    if not to_another_target(plan):
        return False
    return all(records[node.id].state == "pending" and records[node.id].attempts == 0
               for node in plan.nodes() if node.kind in CHANGES_WHAT_RUNS)


def stale_reason(plan: Plan, targets: list[Target], compose_apps: tuple[str, ...] | None) -> str | None:
    """Why the Targets verified now no longer hold the plan's Target as planned, or None."""
    name, version = plan.meta["target"], plan.meta["version"]
    target = next((t for t in targets if t.name == name), None)
    if target is None:
        return f"Target {name} (version {version}) was withdrawn from the factory"
    apps, planned = {a.name: a.uri for a in target.narrowed(compose_apps).apps}, plan.meta.get("apps", {})
    if target.version != version or apps != planned:
        changed = sorted(n for n in apps.keys() | planned.keys() if apps.get(n) != planned.get(n))
        what = f"app(s) {', '.join(changed)} differ" if changed else f"its version is {target.version} now"
        return f"Target {name} (version {version}) changed in the factory since this update was planned: {what}"
    return None


def superseded_by(plan: Plan, latest: Target | None) -> str | None:
    """Why `latest`, the newest Target the device may run, replaces the plan's, or None: it is
    newer (fioup's daemon: "can't resume current update, there is a newer version available")."""
    if latest is None or latest.version <= plan.meta["version"] or latest.name == plan.meta["target"]:
        return None
    return f"superseded by {latest.name} (version {latest.version})"


def download_end(plan: Plan) -> str:
    """The node that ends the download phase, `report:EcuDownloadCompleted`: `fetch`, and the daemon
    outside its install window, run up to it (everything it needs is in the store then)."""
    return next(node.id for node in plan.nodes()
                if node.kind == report.EVENT_KIND and node.params.get("event") == "EcuDownloadCompleted")


def downloaded(plan: Plan, records: dict[str, NodeRecord]) -> bool:
    return records[download_end(plan)].state == "done"


def installing(plan: Plan, records: dict[str, NodeRecord]) -> bool:
    """Whether a node past the download phase was ever tried (an image load, a stop, a report):
    once the install began, it is finished, window or not."""
    download = plan.ancestors(download_end(plan)) | {download_end(plan)}
    return any(records[n].state != "pending" or records[n].attempts for n in plan.graph.nodes if n not in download)


def closing_event(plan: Plan, records: dict[str, NodeRecord]) -> str:
    """The event that tells the gateway an update ended unsuccessfully in the phase it reached, as fioup
    ends each phase: EcuDownloadCompleted while downloading, EcuInstallationCompleted after."""
    return "EcuInstallationCompleted" if downloaded(plan, records) else "EcuDownloadCompleted"
