"""The device agent: wires the config, clients and tasks, and runs an update end to end.

`Agent` is the one place that knows every part: it refreshes the Targets (TUF), observes what
runs, walks the app trees, asks the planner for a plan, and hands the plan to the executor with
the task implementations. The commands in `cli/` only parse flags and print; the planner and
the engine know nothing of each other; the tasks know nothing of scheduling.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from functools import cached_property

from fioup_flow import badtargets, rollback
from fioup_flow.checkpoint import Attempt, CheckpointStore, store_path
from fioup_flow.composeapp import AppTree, AppTreeLoader
from fioup_flow.config import Config
from fioup_flow.diskspace import storage_stat
from fioup_flow.engine import EventHook, Executor, RunResult
from fioup_flow.errors import FetchError, FioupFlowError, MetadataUpdateError, NoSpaceError, NoUpdateInProgressError
from fioup_flow.events import make_event
from fioup_flow.gateway import GatewayClient, GatewayError
from fioup_flow.graph import Plan, new_plan_id
from fioup_flow.installed import current_target
from fioup_flow.metadata import TargetsSource, targets_source
from fioup_flow.offline import BundleTargets, NoGateway, OfflineBundle
from fioup_flow.ongoing import Verdict, cancellable, closing_event, stale_reason
from fioup_flow.outbox import EVENTS, Outbox, StateReport, outbox_path
from fioup_flow.planner import Observed, compile_update, diff_apps, fetched_blobs
from fioup_flow.registry import BlobSource, HubCredentials, RegistryClient
from fioup_flow.store import BlobStore
from fioup_flow.sysinfo import state_reports
from fioup_flow.targets import Target
from fioup_flow.task import Task
from fioup_flow.throttle import TokenBucket
from tasks import appstate, commit, fetch, install, preflight, prune, report, space, start, stop
from tasks.apps_states import apps_states_report
from tasks.compose import Compose
from tasks.portleak import EngineRestart

log = logging.getLogger(__name__)

FAILURE_EVENT_NS = uuid.UUID("6f9619ff-8b86-d011-b42d-00c04fc964ff")


class Agent:
    def __init__(self, config: Config, on_event: EventHook | None = None,
                 on_next_plan: Callable[[Plan], None] | None = None, bundle: OfflineBundle | None = None):
        self.config = config
        self.on_event = on_event
        self.on_next_plan = on_next_plan  # told when a run goes on with another plan (a rollback)
        self.bundle = bundle  # an offline update's source (--src-dir); None: the gateway and registries

    def follow(self, plan: Plan) -> None:
        """Take the source of the update in progress (an offline bundle's folder it recorded), unless
        the command named one (`apply --src-dir`, for a folder mounted elsewhere now)."""
        self.bundle = self.bundle or OfflineBundle.of(plan)

    # --- the parts, made when first needed ------------------------------------------------
    @cached_property
    def gateway(self) -> GatewayClient | NoGateway:
        """The gateway, or during an offline update its stand-in, which is never contacted."""
        return NoGateway(self.bundle) if self.bundle else GatewayClient(self.config, running=self._running)

    @cached_property
    def quick_gateway(self) -> GatewayClient:
        """The gateway, tried once with no retries: for a look that must not wait out a dead link (is
        the update in progress still wanted?), so that a device at boot goes on at once offline."""
        return GatewayClient(self.config, retry_seconds=0, running=self._running)

    def close(self) -> None:
        """Close the stores this agent opened (the daemon makes a new agent when its config changes),
        once a delivery under way ended."""
        if "outbox" in self.__dict__:
            self.outbox.settle()
        for name in ("checkpoint", "outbox"):
            if name in self.__dict__:
                self.__dict__.pop(name).close()

    def _running(self) -> tuple[str, list[str]] | None:
        """The Target and apps the device runs, for fioup's check-in headers."""
        current = current_target(self.config.flow_dir)
        return (current.name, [a.name for a in current.apps]) if current else None

    @cached_property
    def store(self) -> BlobStore:
        return BlobStore(self.config.reset_apps_root)

    @cached_property
    def registry(self) -> RegistryClient:
        return RegistryClient(self.config.ca_cert, self._registry_credentials)

    @property
    def blobs(self) -> BlobSource:
        """Where blobs come from: the offline bundle's folder, or the registries."""
        return self.bundle.blobs if self.bundle else self.registry

    @cached_property
    def engine(self):
        return appstate.client()

    @cached_property
    def compose(self) -> Compose:
        return Compose(self.config.compose_env)

    @cached_property
    def _engine_report(self) -> preflight.EngineReport:
        report = preflight.check(self.engine, self.compose)
        log.debug("Docker %s at %s (storage driver %s), %s", report.version, report.address, report.driver,
                  report.compose)
        return report

    def check_engine(self) -> preflight.EngineReport:
        """Refuse an engine or a compose this device cannot update with (exit 7 or 8) before anything
        changes; checked once per command."""
        return self._engine_report

    @cached_property
    def outbox(self) -> Outbox:
        return Outbox(outbox_path(self.config.flow_dir))

    @cached_property
    def checkpoint(self) -> CheckpointStore:
        return CheckpointStore(store_path(self.config.flow_dir))

    @cached_property
    def bad_targets(self) -> badtargets.BadTargets:
        return badtargets.BadTargets(self.checkpoint)

    @cached_property
    def rollbacks(self) -> rollback.Rollbacks:
        return rollback.Rollbacks(self.checkpoint, lambda: current_target(self.config.flow_dir), self.load_trees,
                                  lambda tree: start.is_up(self.engine, self.config.compose_apps_root, tree),
                                  health_window=self.config.health_window,
                                  prune_all_images=self.config.prune_unused_images)

    def _registry_credentials(self) -> HubCredentials:
        """The device's registry credentials, from the gateway (what `docker-credential-fioup` does).

        Every token needs them, if only to tell their registry (`ServerURL`) from the others. A
        gateway out of reach is remembered by the gateway client, so the blobs after the first
        failure fail at once; the update stays in progress and the next run asks again.
        """
        try:
            return HubCredentials.from_answer(self.gateway.get_json("hub-creds/"))
        except GatewayError as exc:
            raise FetchError(f"cannot get registry credentials from the gateway: {exc}") from exc

    def tasks(self) -> dict[str, Task]:
        root = self.config.compose_apps_root
        engine_restart = EngineRestart(self.config.engine_restart_command, self.engine)
        implementations: list[Task] = [
            fetch.FetchBlob(self.store, self.blobs, self._bucket()),
            space.SpaceCheck(self.store, self.config.storage_watermark),
            install.InstallApp(self.store, root, self.engine, self.compose),
            stop.StopApp(self.engine, self.compose),
            start.StartApp(root, self.engine, engine_restart, self.compose),
            start.AppHealthy(root, self.engine, engine_restart),
            commit.CommitTarget(self.config.flow_dir),
            prune.Prune(self.store, root, self.engine),
            report.ReportEvent(self.outbox, self.gateway, self.checkpoint.attempt, self._live_details),
            report.ReportAppsStates(self.outbox, self.gateway, self.apps_states),
        ]
        return {task.kind: task for task in implementations}

    def _bucket(self) -> TokenBucket | None:
        rate = self.config.download_rate
        return TokenBucket(rate) if rate else None

    def _live_details(self, event_type: str) -> dict:
        """Details known only when an event is sent: storage figures, the apps' states."""
        if event_type in ("EcuDownloadStarted", "EcuDownloadCompleted", "EcuInstallationCompleted"):
            stat = storage_stat(self.store.root, self.config.storage_watermark, [])
            return {"storage_stat": stat.as_json()}
        return {}

    def apps_states(self) -> StateReport:
        return apps_states_report(self.engine, current_target(self.config.flow_dir))

    def report_state(self, before_run: bool = False) -> None:
        """fioup's reports of what the device is, each only if it changed: system info (before a run)
        and the apps' states (before and after every run). Delivered in the background, so that a
        gateway out of reach never delays a run (an app down since a power cut must start at once
        at boot). Best effort: a report that cannot be made or sent must never fail a command."""
        try:
            states = (state_reports(self.config.values) if before_run else []) + [self.apps_states()]
            report.send_states(self.outbox, self.gateway, states)
        except Exception as exc:  # noqa: BLE001 - e.g. the engine does not answer: the run says so itself
            log.warning("device state not reported: %s", exc)

    # --- metadata -------------------------------------------------------------------------
    def tuf(self, gateway: GatewayClient | None = None) -> TargetsSource:
        if self.bundle:
            return BundleTargets(self.config, self.bundle)
        return targets_source(self.config, gateway or self.gateway)

    def refresh_targets(self, gateway: GatewayClient | None = None) -> list[Target]:
        """Refresh and verify the metadata; report `MetadataUpdateCompleted` when it changed or failed."""
        tuf = self.tuf(gateway)
        before = tuf.targets_version()
        try:
            targets = tuf.refresh()
        except MetadataUpdateError as exc:
            self._report_metadata(False, {"current_version": before, "error": str(exc)})
            raise
        after = tuf.targets_version()
        if after != before:
            self._report_metadata(True, {"from_version": before, "to_version": after})
        return targets

    def _queue_event(self, event_type: str, correlation_id: str, target_name: str, version: int | str,
                     success: bool | None, details: dict, event_id: str | None = None) -> None:
        """Queue an event that no plan node sends (check results, failures) in the durable outbox.

        On a full disk nothing can be queued: the event is sent at once instead, best effort, as
        the gateway hearing why the update stopped matters more than keeping the report for later.
        """
        event_id = event_id or str(uuid.uuid4())
        event = make_event(event_id, event_type, correlation_id, target_name, version, success, details)
        try:
            self.outbox.put(event_id, EVENTS, event)
        except NoSpaceError as full:
            log.warning("%s; sending %s now, without queueing it", full, event_type)
            try:
                self.gateway.send("POST", EVENTS, [event])
            except Exception as exc:  # noqa: BLE001 - a report must never hide the update's own error
                log.warning("%s is lost: %s", event_type, exc)

    def _report_metadata(self, success: bool, details: dict) -> None:
        current = current_target(self.config.flow_dir)
        self._queue_event("MetadataUpdateCompleted", f"meta-{new_plan_id()}", current.name if current else "",
                          current.version if current else 0, success, details)

    def flush_outbox(self) -> int | None:
        """Send what the outbox holds; how many reports are left, None if it cannot even be opened
        (a full disk): a report that cannot go out now must never fail a command."""
        try:
            self.outbox.settle()
            return self.outbox.flush(self.gateway)
        except NoSpaceError as exc:
            log.warning("reports not sent: %s", exc)
            return None

    def recheck(self, plan: Plan) -> Verdict:
        """Whether the update in progress may go on (see `ongoing`), from one refresh of the Targets with
        no retries: at boot the device must not wait out a dead link. Offline, or with metadata that
        does not verify, the frozen plan goes on. An offline update is not checked again: the gateway
        is not to be contacted, and its bundle vouched for its Target when it was planned."""
        if self.bundle:
            return Verdict()
        if not cancellable(plan, self.checkpoint.records(plan.plan_id, plan.graph.nodes)):
            return Verdict()
        try:
            targets = self.refresh_targets(self.quick_gateway)
        except (MetadataUpdateError, NoSpaceError) as exc:
            return Verdict(note=f"the Targets could not be checked again ({exc}): going on with the frozen plan")
        return Verdict(cancel=stale_reason(plan, targets, self.config.compose_apps))

    def cancel_stale(self, plan: Plan, reason: str) -> None:
        """Cancel the update in progress for `reason`: reported (the event that closes the phase it
        reached, unsuccessful), then moved to history with the reason. The event id is fixed, so a
        cut between the two sends nothing twice."""
        self._report_cancelled(plan, self.checkpoint.records(plan.plan_id, plan.graph.nodes), reason)
        self.checkpoint.finish(plan, "cancelled", reason)

    def _report_cancelled(self, plan: Plan, records: dict, reason: str | None = None) -> None:
        """Report a cancel fioup-flow decided (`reason`, or the one its cancel request gave) with the
        event that closes the phase the update reached; a person's `cancel` is not reported."""
        reason = reason or self.checkpoint.cancel_reason(plan.plan_id)
        if reason is not None:
            self._report_unsuccessful(plan, self.checkpoint.attempt(plan.plan_id), closing_event(plan, records),
                                      f"cancelled: {reason}", "cancelled")

    # --- planning ---------------------------------------------------------------------------
    def observe(self) -> Observed:
        """What runs now: the committed Target and, per app of it, whether its version is up."""
        current = current_target(self.config.flow_dir)
        if current is None:
            return Observed(None, {})
        loader = AppTreeLoader(self.store, registry=None)
        up = {}
        for app in current.apps:
            try:
                tree = loader.load(app)
            except FioupFlowError:
                up[app.name] = False
                continue
            up[app.name] = start.is_up(self.engine, self.config.compose_apps_root, tree)
        return Observed(current, up)

    def load_trees(self, target: Target) -> dict[str, AppTree]:
        """Walk every app of the Target (fetching the small metadata blobs it lacks)."""
        return AppTreeLoader(self.store, self.blobs).load_all(target.apps)

    def choose_target(self, version: int | None, force: bool = False) -> Target:
        """Of the Targets refreshed now, Target `version` or the latest one (see `choose`)."""
        return self.choose(self.refresh_targets(), version, force)

    def choose(self, targets: list[Target], version: int | None = None, force: bool = False) -> Target:
        """Of `targets`, Target `version` or the latest one, never one marked bad unless `force` (see
        `badtargets.choose`), narrowed to the apps this device runs."""
        current = current_target(self.config.flow_dir)
        return badtargets.choose(targets, version, self.bad_targets, force=force,
                                 current=current.name if current else None).narrowed(self.config.compose_apps)

    def plan(self, target: Target, report_failure: bool = False) -> Plan | None:
        """The plan from what runs to `target`, or None when the device already runs it.

        With `report_failure` (a real update, not a preview), a Target refused while its apps
        are walked (a compose file that does not parse, a registry out of reach) is reported as
        fioup reports a failed Init: no plan is frozen, so no node would ever tell the gateway;
        and if the refusal is the Target's own (a compose file that does not parse), it is marked bad.
        """
        observed = self.observe()
        diff = diff_apps(observed.current, target, observed.apps_up)
        nothing_to_do = not (diff.add or diff.remove or diff.update or diff.repair)
        if nothing_to_do and observed.current is not None and observed.current.name == target.name:
            return None
        try:
            return self._planned(observed, target)
        except FioupFlowError as exc:
            if report_failure:
                self._report_init_failure(target, exc)
            raise

    def _planned(self, observed: Observed, target: Target) -> Plan:
        """Walk the Target's apps and compile the plan; from an offline bundle, only once the bundle
        holds every app and every blob to fetch (missing content must install nothing)."""
        if self.bundle:
            self.bundle.require_apps(target)
        plan = self._compile(observed, target, self.load_trees(target))
        if self.bundle:
            self.bundle.require_blobs(fetched_blobs(plan), self.store)
        return plan

    def _compile(self, observed: Observed, target: Target, trees: dict[str, AppTree]) -> Plan:
        return compile_update(observed, target, trees, prune_all_images=self.config.prune_unused_images,
                              health_window=self.config.health_window,
                              source=self.bundle.record() if self.bundle else None,
                              install_after_download=self.bundle is not None)

    def _report_init_failure(self, target: Target, error: FioupFlowError) -> None:
        correlation_id = new_plan_id()
        self._queue_event("UpdateInitCompleted", correlation_id, target.name, target.version, False,
                          {"error": str(error)})
        if badtargets.is_permanent(error):
            self.bad_targets.mark(target, str(error), correlation_id)

    def restore(self, keep_partials: bool = False) -> RunResult | None:
        """After a cancelled update: drop its partial downloads (no update is in progress to resume
        them), and bring back every app of the current Target that is not up. `keep_partials` when a
        newer update is planned next: its space node keeps those it fetches and drops the others.

        Works offline: the current Target's blobs are still in the store (only a completed update
        prunes), so the plan walks the apps from the store and its fetch nodes are all in place.
        Returns None when everything already runs.
        """
        if not keep_partials:
            self.store.discard_partials()
        current = current_target(self.config.flow_dir)
        observed = self.observe()
        if current is None or all(observed.apps_up.values()):
            return None
        loader = AppTreeLoader(self.store, registry=None)
        trees = {app.name: loader.load(app) for app in current.apps}
        return self.run(self._compile(observed, current, trees))

    # --- running --------------------------------------------------------------------------
    def run(self, plan: Plan | None = None, until: set[str] | None = None) -> RunResult:
        """Freeze and run `plan`, or resume the plan in progress (plan None), reporting the apps'
        states before and after, as fioup does around every run, a failed one too. With `until`,
        only those nodes and what they need run (see `Executor.run`); a rollback always runs whole.

        An update that fails for a reason of its Target's own is handed over (`rollback`): its
        Target is marked bad and its rollback, if it needs one, runs at once; the result is then
        the rollback's. An update that completes clears its Target's mark (`apply --force`).
        """
        self.report_state(before_run=True)
        if plan is None:
            plan = self._begin_attempt()
            if isinstance(plan, RunResult):
                self.report_state()
                return plan
        while True:
            scope = None if rollback.is_rollback(plan) else until
            result = Executor(self.checkpoint, self.tasks(), on_event=self.on_event, halt_on=badtargets.is_permanent,
                              on_cancelled=self._report_cancelled).run(plan, scope)
            follow = self._hand_over(plan, self._attempt_failed(plan, result)) if result.outcome == "failed" else None
            if not isinstance(follow, Plan):
                break
            plan = follow
        if result.outcome == "completed" and not rollback.is_rollback(plan):
            self.bad_targets.clear(plan.meta["target"])
        self.report_state()
        return result

    def _attempt_failed(self, plan: Plan, result: RunResult) -> Attempt:
        """End the current attempt as failed (the next run begins another, or the update is handed
        over if the failure was permanent) and report the failure."""
        node_id, exc = min(result.failed.items())
        error, permanent = f"{node_id}: {exc}", badtargets.is_permanent(exc)
        try:
            attempt = self.checkpoint.fail_attempt(plan.plan_id, node_id, error, permanent)
        except NoSpaceError as full:  # reported all the same; the next run goes on with this attempt
            log.warning("could not record that the attempt failed: %s", full)
            attempt = replace(self.checkpoint.attempt(plan.plan_id), failed={"node": node_id, "error": error})
        self._report_failure(plan, attempt)
        return attempt

    def _begin_attempt(self) -> Plan | RunResult:
        """Before a run of the plan in progress: if its last run failed, make sure that failure is
        reported and, if permanent, handed over (a crash may have come between), then begin the
        next attempt. Returns the plan to run: the one in progress, or the rollback it was handed
        over to; or, when the failed update ended with nothing to run, how it ended."""
        plan = self.checkpoint.current_plan()
        if plan is None:
            raise NoUpdateInProgressError("no update in progress to resume")
        attempt = self.checkpoint.attempt(plan.plan_id)
        if attempt.failed is not None:
            self._report_failure(plan, attempt)
            if (follow := self._hand_over(plan, attempt)) is not None:
                return follow
        self.checkpoint.begin_attempt(plan.plan_id)
        return plan

    def _hand_over(self, plan: Plan, attempt: Attempt) -> Plan | RunResult | None:
        """After a failed attempt at `plan` (see `rollback`): the rollback to run now, how the update
        ended if it ended with nothing to run, or None if it stays in progress."""
        node = attempt.failed["node"]
        exit_code = self.checkpoint.record(plan.plan_id, node).exit_code  # the hand-over drops the records
        handed = self.rollbacks.after_failure(plan, attempt)
        if handed == "failed":
            return RunResult(plan.plan_id, "failed", {node: rollback.EndedFailure(attempt.failed["error"], exit_code)})
        if handed != "rolled-back":
            return None
        follow = self.checkpoint.current_plan()
        if self.on_next_plan:
            self.on_next_plan(follow)
        return follow

    def _report_failure(self, plan: Plan, attempt: Attempt) -> None:
        """fioup's failure events, one per failed attempt, under its correlation id: download failed,
        or installation completed unsuccessfully."""
        kind = plan.node(attempt.failed["node"]).kind
        event_type = "EcuDownloadCompleted" if kind in (fetch.KIND, space.KIND) else "EcuInstallationCompleted"
        self._report_unsuccessful(plan, attempt, event_type, attempt.failed["error"], str(attempt.number))

    def _report_unsuccessful(self, plan: Plan, attempt: Attempt, event_type: str, error: str, key: str) -> None:
        """Queue `event_type` with success false for `plan`, under the attempt's correlation id; its id
        is derived from `key`, fixed for the occasion, so a resend after a crash is the same event."""
        event_id = str(uuid.uuid5(FAILURE_EVENT_NS, f"{plan.plan_id}:{key}"))
        details = rollback.failure_details(self._live_details(event_type), error, self._services(plan, event_type))
        self._queue_event(event_type, attempt.correlation_id, plan.meta["target"], plan.meta["version"], False,
                          details, event_id)

    def _services(self, plan: Plan, event_type: str) -> dict[str, list[appstate.ServiceState]]:
        """The services of the apps `plan` started, for the report of its failed installation; none if
        the engine does not answer (the report goes out all the same)."""
        if event_type != "EcuInstallationCompleted":
            return {}
        try:
            return {app: appstate.services(self.engine, app) for app in rollback.started_apps(plan)}
        except (FioupFlowError, *appstate.UNANSWERED) as exc:
            log.warning("the services' states are not in the failure report: %s", exc)
            return {}
