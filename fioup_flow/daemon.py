"""The daemon: what keeps a device left alone on the latest Target it may run, for years.

Each cycle looks at the update in progress first, as `resume` does (a power cut, a signal, a
failure or a download waiting for its install window left one), then for a new Target:

- an update in progress that stopped no app yet is cancelled when the factory withdrew or
  changed its Target (`ongoing.stale_reason`), or when a newer Target appeared: fioup's daemon
  cancels it then and starts the newer one ("there is a newer version available"). Once an app
  was stopped, it is finished first (aktualizr-lite finalizes a pending install first too);
- else it goes on; with none, the Targets are refreshed (TUF) and the newest one allowed is
  planned and run. With `pacman.install_window`, an update to another Target runs up to the end
  of its download at once, and the rest only inside a window (`window`);
- the Target chosen is the newest one that is not marked bad (`badtargets.choose`). A run that
  fails for a reason of its Target's own (`badtargets.is_permanent`: an app that does not stay up
  through its health window, a blob that does not match its digest) is handed over by the agent:
  the Target is marked bad and the update rolled back (`rollback`), and the next cycle, at once,
  takes a newer Target if there is one and never that one again. A rollback that fails stays in
  progress: the next cycles go on with it, with backoff;
- a transient failure (the gateway or a registry out of reach, a full disk) is tried again by the
  next cycles; after `pacman.max_attempts` failed attempts at the same Target (fioup's daemon: 3)
  the update is cancelled and the device syncs back to its current Target. That Target is held
  back for `HOLD_S`, unless a newer one comes first;
- the apps' states and the system info are reported each cycle, each only if it changed.

Then it sleeps the polling interval (`uptane.polling_seconds` or `uptane.polling_sec`) plus up
to `JITTER` of it, so that a fleet does not poll in step (balena-supervisor's `poll.ts` adds up to
60 s; fioup and aktualizr-lite add none). It does not sleep after an update completed, was
cancelled, or failed for good (aktualizr-lite goes straight to its next check after an install,
fioup after a cancel for a newer version). After failed cycles (a gateway or registry out of
reach, a failed run, a failed rollback) it backs off exponentially from `BACKOFF_BASE_S`, capped
at the interval, with jitter (balena-supervisor: min(interval, 15 s x 2^n)). A download waiting
for its window sleeps until the window opens at the latest.

While a plan runs, a watcher thread refreshes the Targets every interval: a newer Target that
appears while no app was stopped cancels the run at its next node boundary (the checkpoint
store's cancel flag, with the reason; a download stops at its next chunk, its partial kept),
and the next cycle plans the newer one. Its blobs already in the store are not fetched again,
and its space node keeps the partial downloads it needs.

SIGTERM and SIGINT stop the daemon at a node boundary (the executor's own handling while a plan
runs), leaving the update resumable, and it exits 0: a stop that was asked for is a clean stop
for systemd. While it sleeps or checks, it exits at once (fioup exits 0 when interrupted while
sleeping). SIGHUP reloads the config between cycles and starts a cycle. The clock, the sleep and
the randomness are injectable for tests.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import random
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from fioup_flow import rollback
from fioup_flow.agent import Agent
from fioup_flow.config import Config
from fioup_flow.engine import NodeEvent, RunResult
from fioup_flow.errors import FioupFlowError, LockedError, MetadataUpdateError, NoMatchingTargetError, NoSpaceError
from fioup_flow.graph import Plan
from fioup_flow.installed import current_target
from fioup_flow.lock import LOCK_NAME, InstanceLock
from fioup_flow.ongoing import (
    cancellable,
    download_end,
    downloaded,
    installing,
    stale_reason,
    superseded_by,
    to_another_target,
)
from fioup_flow.targets import Target
from fioup_flow.window import InstallWindows
from tasks import appstate

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 15.0  # balena-supervisor's poll.ts: min(interval, 15 s * 2^n) after failed polls
JITTER = 0.1  # a random share of the interval added to each sleep
HOLD_S = 24 * 3600  # how long a Target given up after max_attempts transient failures is held back
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HANDLED = {*STOP_SIGNALS, signal.SIGHUP}


class Clock(Protocol):
    """Time as the daemon sees it: `now` in local time (install windows), and a sleep that `wake`
    (a signal) ends early."""

    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...

    def wake(self) -> None: ...


class SystemClock:
    def __init__(self) -> None:
        self._wake = threading.Event()

    def now(self) -> datetime:
        return datetime.now().astimezone()

    def sleep(self, seconds: float) -> None:
        self._wake.wait(max(0.0, seconds))
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()


@dataclass(frozen=True)
class Policy:
    """When the daemon looks again, and how often it tries a Target that fails transiently, from the config."""

    interval_s: float
    max_attempts: int
    window: InstallWindows | None

    @classmethod
    def from_config(cls, config: Config) -> Policy:
        """Every key read here is checked at start: an invalid value is exit 2, not a surprise later."""
        return cls(config.polling_seconds, config.max_attempts, config.install_window)

    def pause(self, failures: int, rand: random.Random) -> float:
        """The sleep after a cycle: the interval plus up to JITTER of it; after `failures` failed cycles
        in a row, BACKOFF_BASE_S (an eighth of a shorter interval) doubling each time, capped at the
        interval, and from half of that to all of it at random ("equal jitter": it still grows, and a
        fleet that failed together spreads)."""
        if failures == 0:
            return self.interval_s * (1 + JITTER * rand.random())
        base = min(BACKOFF_BASE_S, self.interval_s / 8)  # a short interval backs off in steps still
        ceiling = min(self.interval_s, base * 2 ** min(failures - 1, 30))
        return ceiling * (0.5 + 0.5 * rand.random())


@dataclass(frozen=True)
class Cycle:
    """How a cycle ended: `result` (idle, updated, waiting, cancelled, rolled-back, marked-bad, gave-up,
    failed, busy, interrupted), a line for the log, the exit code `--once` gives, and when a downloaded
    update is due (its window opens)."""

    result: str
    message: str
    exit_code: int = 0
    due: datetime | None = None

    @property
    def failed(self) -> bool:
        return self.result == "failed"

    @property
    def again_at_once(self) -> bool:
        """After an update completed, was cancelled, or failed for good (rolled back, or ended with
        nothing to undo): a newer Target may wait."""
        return self.result in ("updated", "cancelled", "rolled-back", "marked-bad")


class Stopped(BaseException):
    """SIGTERM or SIGINT while no plan runs: nothing to stop at a boundary, the daemon exits."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def release_memory() -> None:
    """Give back to the system what a cycle that worked on an update freed: glibc keeps a freed heap
    for the process otherwise, and a daemon sleeps most of its life at the RSS it is left with."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to ask
        pass


def log_plan(plan: Plan) -> None:
    """A run goes on with another plan: the rollback of an update that failed for good."""
    log.warning("rolling back to %s (version %s): %s", plan.meta["target"], plan.meta["version"],
                plan.meta.get("reason"))


def log_node(event: NodeEvent) -> None:
    """One line per node that finished (failures and retries the executor logs itself); no progress."""
    if event.state == "done" and not event.already:
        log.info("node %s done", event.node.id)


class Daemon:
    """The loop. `load` reads the config (again on SIGHUP)."""

    def __init__(self, load: Callable[[], Config], clock: Clock | None = None, rand: random.Random | None = None):
        self.load = load
        self.clock = clock or SystemClock()
        self.rand = rand or random.Random()
        self.stopped: int | None = None
        self.reload_requested = False
        self.agent: Agent | None = None
        self._reload()

    def _reload(self) -> None:
        """Read the config and make the agent anew (clients, stores): at start, and on SIGHUP."""
        config = self.load()
        config.server  # noqa: B018 - raises (exit 3) on a device that is not registered: nothing to do
        policy = Policy.from_config(config)
        if self.agent is not None:
            self.agent.close()
        self.config, self.policy, self.agent = config, policy, Agent(config, on_event=log_node, on_next_plan=log_plan)
        log.info("config: polling every %d s, at most %d attempts per Target after transient failures, "
                 "install window %s",
                 policy.interval_s, policy.max_attempts, policy.window.text if policy.window else "none (any time)")

    # -- the loop ------------------------------------------------------------------------------

    def run(self, once: bool = False, renew: bool = True) -> int:
        """Cycle until stopped (exit 0). `once`: until a cycle would sleep, with that cycle's exit code.

        `renew`: after a cycle that worked on an update and wants the next one at once, go on in a
        fresh process (`_renew`) rather than in this one."""
        with self._signals():
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)  # those that came while it started afresh
                return self._loop(once, renew)
            except Stopped as stop:  # while it slept or started
                return 128 + stop.signum if once else 0

    def _loop(self, once: bool, renew: bool) -> int:
        failures = 0
        while True:
            cycle = self.cycle()
            failures = failures + 1 if cycle.failed else 0
            pause = None if cycle.again_at_once else self._pause(cycle, failures)
            self._log(cycle, pause)
            if self.stopped is not None or cycle.result == "interrupted":
                return cycle.exit_code if once else 0
            if once and pause is not None:
                return cycle.exit_code
            if pause is None and renew and not once:
                self._renew()
            if cycle.result != "idle":
                release_memory()
            if pause is not None:
                self.clock.sleep(pause)
            if self.reload_requested:
                self._reload_on_signal()

    def _pause(self, cycle: Cycle, failures: int) -> float:
        pause = self.policy.pause(failures, self.rand)
        if cycle.due is not None:
            pause = min(pause, max(0.0, (cycle.due - self.clock.now()).total_seconds()))
        return pause

    @staticmethod
    def _log(cycle: Cycle, pause: float | None) -> None:
        then = "next cycle at once" if pause is None else f"next check in {pause:.{0 if pause >= 10 else 1}f} s"
        if cycle.failed:
            log.warning("cycle failed (exit %d): %s; backing off, %s", cycle.exit_code, cycle.message, then)
        else:
            log.info("cycle %s: %s; %s", cycle.result, cycle.message, then)

    def _renew(self) -> None:
        """Exec this daemon anew, same process id, same arguments: its next cycle comes at once there,
        as it would have here. An update loads what an idle daemon never needs (networkx alone is
        13 MB) and leaves a heap glibc does not give back whole; a device then pays that for the
        weeks the daemon sleeps. Everything it knows is on disk. If the exec fails, it goes on here."""
        log.info("starting afresh, to give back the memory the update took")
        self.agent.close()
        for handler in logging.getLogger().handlers:
            handler.flush()
        # A signal that comes before the new process has its handlers waits for them (the mask
        # survives the exec) instead of killing it with the default action.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            os.execv(sys.executable, sys.orig_argv)
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
            log.warning("could not start afresh (%s): going on in this process", exc)

    def _reload_on_signal(self) -> None:
        self.reload_requested = False
        try:
            self._reload()
        except FioupFlowError as exc:  # a bad edit must not kill a device's updater: keep the config it had
            log.error("config not reloaded, the previous one stays: %s", exc)

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT: stop (while a plan runs the executor's own handlers stop it at a node
        boundary); SIGHUP: reload between cycles. Only the main thread may install them."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_stop) for sig in STOP_SIGNALS}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_stop(self, signum: int, _frame: object) -> None:
        log.info("signal %d: stopping (again to stop at once)", signum)
        self.stopped = signum
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        raise Stopped(signum)

    def _on_hangup(self, _signum: int, _frame: object) -> None:
        log.info("SIGHUP: reloading the config")
        self.reload_requested = True
        self.clock.wake()

    # -- one cycle -----------------------------------------------------------------------------

    def cycle(self) -> Cycle:
        """Go on with the update in progress, or look for a new one; never raises but Stopped's kin."""
        try:
            with InstanceLock(self.config.flow_dir / LOCK_NAME):
                self.agent.gateway.try_again()
                ongoing = self.agent.checkpoint.current_plan()
                return self._go_on(ongoing) if ongoing is not None else self._update()
        except Stopped as stop:
            return Cycle("interrupted", f"signal {stop.signum}", 128 + stop.signum)
        except LockedError as exc:  # a person's command runs: leave the device to it this time
            return Cycle("busy", str(exc), exc.exit_code)
        except NoMatchingTargetError as exc:
            self.agent.report_state(before_run=True)
            return Cycle("idle", str(exc))
        except FioupFlowError as exc:
            return Cycle("failed", str(exc), exc.exit_code)
        except appstate.UNANSWERED as exc:  # the engine went away (dockerd restarting, say): wait for it
            error = appstate.unavailable(exc)
            return Cycle("failed", str(error), error.exit_code)
        except Exception as exc:  # noqa: BLE001 - a device's updater must outlive a bug: logged, backed off
            log.exception("cycle failed")
            return Cycle("failed", f"{type(exc).__name__}: {exc}", 1)

    def _update(self) -> Cycle:
        target = self._choose(self.agent.refresh_targets())
        plan = self.agent.plan(target, report_failure=True)
        if plan is None:
            self.agent.report_state(before_run=True)
            return Cycle("idle", f"running {target.name} (version {target.version}), nothing to do")
        log.info("update %s to %s (version %s): %d nodes", plan.plan_id, target.name, target.version, len(plan))
        return self._run(plan, new=True)

    def _go_on(self, plan: Plan) -> Cycle:
        """The update in progress: given up, cancelled (`judge`) or run on. One whose last run failed for
        good and was not handed over yet (a crash came between) is neither: the agent hands it over as
        it runs it (its Target marked bad, its rollback run)."""
        if not self._failed_for_good(plan):
            self._count_failure(plan)  # a failure a crash kept from being counted
            if self._exhausted(plan):
                return self._give_up(plan)
            reason = self.judge(plan)
            if reason is not None:
                self.agent.cancel_stale(plan, reason)
                return self._cancelled(reason)
        log.info("going on with update %s to %s", plan.plan_id, plan.meta["target"])
        return self._run(plan, new=False)

    def _run(self, plan: Plan, new: bool) -> Cycle:
        """Run `plan` (frozen by this run if `new`): with an install window, its download first, the
        rest only inside the window; once its install began, to the end whatever the hour."""
        self.agent.check_engine()
        records = {} if new else self.agent.checkpoint.records(plan.plan_id, plan.graph.nodes)
        if self._windowed(plan) and (new or not installing(plan, records)):
            if new or not downloaded(plan, records):
                result = self._watched(plan, plan if new else None, {download_end(plan)})
                if result.outcome != "paused":
                    return self._ended(plan, result)
                new = False
            now = self.clock.now()
            if not self.policy.window.is_open(now):
                self.agent.report_state(before_run=True)
                due = self.policy.window.next_opening(now)
                return Cycle("waiting", f"update {plan.plan_id} to {plan.meta['target']} is downloaded; install due "
                             f"{due:%Y-%m-%d %H:%M} (pacman.install_window {self.policy.window.text})", due=due)
        return self._ended(plan, self._watched(plan, plan if new else None, None))

    def _windowed(self, plan: Plan) -> bool:
        """The window holds updates to another Target; a sync of the current one (apps to start
        again) restarts nothing that runs, and a rollback brings back what ran: they go at once."""
        return self.policy.window is not None and to_another_target(plan)

    def _watched(self, plan: Plan, new: Plan | None, until: set[str] | None) -> RunResult:
        with Watcher(self, plan):
            return self.agent.run(new, until)

    def _ended(self, plan: Plan, result: RunResult) -> Cycle:
        """How the run of `plan` ended, in the cycle's words. A run that failed for good ends with the
        agent's hand-over (`rollback`): the rollback's own result (110 done, 111 failed: in progress,
        the next cycles go on with it), or the update ended with nothing to undo, its Target bad."""
        target = plan.meta["target"]
        if result.outcome == "completed":
            if (rolled_back := rollback.outcome_error(self.agent.checkpoint, result.plan_id, failed=False)) is not None:
                return Cycle("rolled-back", str(rolled_back), rolled_back.exit_code)
            self.agent.checkpoint.clear_failed_attempts(target)
            return Cycle("updated", f"update {plan.plan_id} to {target} completed")
        if result.outcome == "cancelled":
            reason = self.agent.checkpoint.history(1)[0].get("reason")
            return self._cancelled(reason, person=reason is None)
        if result.outcome == "interrupted":
            return Cycle("interrupted", f"update {plan.plan_id} interrupted, resumable", result.exit_code)
        if (ended := rollback.ended_note(self.agent.checkpoint, result.plan_id)) is not None:
            return Cycle("marked-bad", ended, result.exit_code)
        if (failed := rollback.outcome_error(self.agent.checkpoint, result.plan_id, failed=True)) is not None:
            return Cycle("failed", str(failed), failed.exit_code)
        node_id, exc = min(result.failed.items())
        failures = self._count_failure(plan)
        if self._exhausted(plan):
            return self._give_up(plan)
        counted = f", attempt {failures} of {self.policy.max_attempts}" if failures is not None else ""
        return Cycle("failed", f"update {plan.plan_id} to {target}{counted}: {node_id}: {exc}", result.exit_code)

    def _cancelled(self, reason: str | None, person: bool = False) -> Cycle:
        """After a cancel: start again any app the update stopped (none, normally: only an update that
        stopped none is cancelled) keeping, for a cancel fioup-flow decided, the partial downloads
        (the next plan's space node keeps those it needs); the next cycle comes at once."""
        self.agent.restore(keep_partials=not person)
        return Cycle("cancelled", reason or "cancelled by a person")

    # -- attempts per Target, after transient failures ------------------------------------------

    def _failed_for_good(self, plan: Plan) -> bool:
        """Whether the last run of `plan` failed for a reason of its Target's own (as the agent judged it
        with `badtargets.is_permanent`): the agent's to hand over, never an attempt to count."""
        return bool((self.agent.checkpoint.attempt(plan.plan_id).failed or {}).get("permanent"))

    def _count_failure(self, plan: Plan) -> int | None:
        """Count the failed attempt of `plan` (once), if it counts: a transient failure of an update to
        another Target (a sync of the current one is what giving up would do anyway, and a rollback
        brings back what ran: those are tried on, with backoff). Returns the failed attempts at its
        Target then, None if it does not count."""
        attempt = self.agent.checkpoint.attempt(plan.plan_id)
        if attempt.failed is None or self._failed_for_good(plan) or not to_another_target(plan):
            return None
        self.agent.checkpoint.note_failed_attempt(plan.meta["target"], attempt.correlation_id,
                                                  self.clock.now().timestamp())
        return self._failures(plan.meta["target"])

    def _failures(self, target: str) -> int:
        """Failed attempts at `target` within the last HOLD_S."""
        since = self.clock.now().timestamp() - HOLD_S
        return sum(1 for at in self.agent.checkpoint.failed_attempts(target).values() if at > since)

    def _given_up(self, target: str) -> bool:
        """Given up for now, after `pacman.max_attempts` transient failures."""
        return self._failures(target) >= self.policy.max_attempts

    def _exhausted(self, plan: Plan) -> bool:
        return to_another_target(plan) and self._given_up(plan.meta["target"])

    def _give_up(self, plan: Plan) -> Cycle:
        target = plan.meta["target"]
        reason = (f"gave up after {self.policy.max_attempts} failed attempts at {target}: back to the current "
                  f"Target; {target} is tried again in {HOLD_S // 3600} h unless a newer Target comes first")
        self.agent.cancel_stale(plan, reason)
        self.agent.restore()
        return Cycle("gave-up", reason)

    # -- which Target ------------------------------------------------------------------------------

    def _latest(self, targets: list[Target]) -> Target:
        """The newest Target the device may run: under the version cap, not marked bad (`badtargets.choose`:
        a newer one than a bad one is taken), not given up for now. NoMatchingTargetError if none is."""
        return self.agent.choose([t for t in targets if not self._given_up(t.name)])

    def _choose(self, targets: list[Target]) -> Target:
        """The Target to update to: the newest allowed, but never older than the current one; with
        none newer, the current one (which syncs it: apps that should run and do not are started)."""
        current = current_target(self.config.flow_dir)
        try:
            latest = self._latest(targets)
        except NoMatchingTargetError:
            if current is None:
                raise
            latest = None
        if latest is not None and (current is None or latest.version >= current.version):
            return latest
        listed = next((t for t in targets if t.name == current.name), None)
        return listed.narrowed(self.config.compose_apps) if listed else current

    def judge(self, plan: Plan) -> str | None:
        """Why the update in progress should be cancelled now (withdrawn, changed, superseded), or None.
        Only an update that stopped no app yet is judged; the Targets are refreshed once, with no
        retries: a device at boot with no link goes on with its frozen plan at once."""
        if not cancellable(plan, self.agent.checkpoint.records(plan.plan_id, plan.graph.nodes)):
            return None
        try:
            targets = self.agent.refresh_targets(self.agent.quick_gateway)
        except (MetadataUpdateError, NoSpaceError) as exc:
            log.info("the Targets could not be checked (%s): going on with the frozen plan", exc)
            return None
        try:
            latest = self._latest(targets)
        except NoMatchingTargetError:
            latest = None
        return stale_reason(plan, targets, self.config.compose_apps) or superseded_by(plan, latest)


class Watcher:
    """While a plan runs: every polling interval (with jitter), judge it again (`Daemon.judge`), and
    ask the runner to cancel it, with the reason, when it should be; the executor sees the request
    within a fraction of a second and stops at the next node boundary."""

    def __init__(self, daemon: Daemon, plan: Plan):
        self.daemon = daemon
        self.plan = plan
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watcher", daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        daemon = self.daemon
        while not self._done.wait(daemon.policy.pause(0, daemon.rand)):
            try:
                reason = daemon.judge(self.plan)
            except Exception as exc:  # noqa: BLE001 - a failed look must never disturb the run
                log.warning("could not judge the update in progress: %s", exc)
                continue
            if reason is not None and not self._done.is_set():
                log.info("update %s: %s; cancelling it at the next node boundary", self.plan.plan_id, reason)
                daemon.agent.checkpoint.request_cancel(self.plan.plan_id, reason)
                return
