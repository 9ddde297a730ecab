"""The executor: runs a frozen plan in dependency order, checkpointing every node durably.

Guarantees (documented in the README):
- The plan is frozen in the checkpoint store before the first side effect; a resumed run
  executes the frozen plan, never a new one.
- At-least-once execution of idempotent effects. A node is recorded `done` only after its
  `run` returned and the record is synced; a crash in between runs it again on resume.
- The checkpoint is a hint, the world is the truth: before running any node, and before
  trusting a node recorded `done`, the engine asks the task `is_done(node)`. An effect already
  in place is recorded done without running; a `done` node whose effect vanished runs again.
  One exception: a point of no return (`Node.point_of_no_return`) recorded done settles itself
  and every node before it; they are neither asked nor run again (the update is history there).
- A failed node stops its dependents (they stay `pending`); independent branches finish. The
  update stays in progress, so a resume retries the failed node (and runs what waits on it).
  A failure the caller's `halt_on` picks (one no retry will mend) stops the run at once instead,
  as a signal does: what runs beside it would only delay what the caller does next.
- TransientError is retried with jittered exponential backoff, bounded in attempts and time;
  any other exception fails the node at once and is kept for the caller (exit codes).
- SIGINT/SIGTERM: scheduling stops, running nodes are asked to stop (`ctx.cancelled`) and
  waited for; the update stays in progress (exit 128+signal, like shells). A task that stops
  early raises `Interrupted`: its node goes back to pending, its partial work kept. A second
  signal kills the process at once: running nodes are abandoned and re-checked on resume.
- Cancel (a flag in the store, set by `fioup-flow cancel`) is seen within `poll_s`: nothing new
  starts, running nodes are asked to stop as for a signal, and the plan moves to history as
  cancelled (`on_cancelled` sees it, with its node records, just before).
- `run(until=...)` runs only the given nodes and what they depend on, and leaves the rest
  pending: the run ends "paused" with the plan still in progress, and a later run goes on.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from fioup_flow.checkpoint import CheckpointStore, NodeRecord
from fioup_flow.errors import NoSpaceError, NoUpdateInProgressError, exit_code_of
from fioup_flow.graph import Plan, PlanError
from fioup_flow.task import Interrupted, Node, Task, TaskContext, TransientError

log = logging.getLogger(__name__)

DEFAULT_LIMITS = {"network": 4, "docker": 1, "disk": 2, "cpu": 2}
CANCELLED_EXIT_CODE = 1


@dataclass(frozen=True)
class RetryPolicy:
    """How TransientErrors are retried: at most `attempts` tries within `budget_s` seconds."""

    attempts: int = 5
    base_s: float = 0.5
    max_wait_s: float = 30.0
    budget_s: float = 300.0


@dataclass(frozen=True)
class NodeEvent:
    """What the progress hook hears: a node changed state or reported bytes.

    state: running | progress | retrying | done | failed. `already` is True for a done node
    whose effect was found in place without running it.
    """

    node: Node
    state: str
    done_bytes: int = 0
    total: int | None = None
    error: BaseException | None = None
    already: bool = False


@dataclass
class RunResult:
    """How a run ended: completed, paused (every node it was asked to run is done, the others wait),
    failed, interrupted (signal) or cancelled."""

    plan_id: str
    outcome: str
    failed: dict[str, BaseException] = field(default_factory=dict)
    signal: int | None = None
    ran: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 completed or paused; failed: the first failed node's code (`exit_code_of`); 128+signal;
        cancelled 1."""
        if self.outcome in ("completed", "paused"):
            return 0
        if self.outcome == "interrupted":
            return 128 + (self.signal or signal.SIGTERM)
        if self.outcome == "failed":
            first = self.failed[min(self.failed)]
            return exit_code_of(first)
        return CANCELLED_EXIT_CODE


EventHook = Callable[[NodeEvent], None]
CancelHook = Callable[[Plan, dict[str, NodeRecord]], None]


class RunObserver(Protocol):
    """What watches every run of the process (`observed_by`); called from the executor's threads.

    Besides its own `on_event` hook, every executor tells the run observers of its process which
    plan it starts, each node event, and how the run ended: a command that shows progress sees every
    run it causes, however deep inside the agent (or the daemon) the executor was made."""

    def plan_started(self, plan: Plan, records: dict[str, NodeRecord]) -> None:
        """A run of `plan` begins (new, resumed, or one that follows another: a rollback, a restore)."""

    def node_event(self, event: NodeEvent) -> None: ...

    def plan_ended(self, plan: Plan, result: RunResult) -> None: ...


_observers: list[RunObserver] = []


@contextlib.contextmanager
def observed_by(observer: RunObserver) -> Iterator[None]:
    """Every executor of this process tells `observer` of its runs while the block runs."""
    _observers.append(observer)
    try:
        yield
    finally:
        _observers.remove(observer)


def _safely(call: Callable[[], None]) -> None:
    try:
        call()
    except Exception:  # a broken progress display must not fail an update
        log.exception("progress hook failed")


def _tell(call: Callable[[RunObserver], None]) -> None:
    for observer in list(_observers):
        _safely(lambda: call(observer))


class Executor:
    """Runs plans with `tasks` (kind -> implementation), at most `limits[resource]` nodes at once per class."""

    def __init__(self, store: CheckpointStore, tasks: dict[str, Task], limits: dict[str, int] | None = None,
                 retry: RetryPolicy = RetryPolicy(), on_event: EventHook | None = None, poll_s: float = 0.2,
                 handle_signals: bool = True, halt_on: Callable[[BaseException], bool] | None = None,
                 on_cancelled: CancelHook | None = None):
        """`on_cancelled(plan, records)` runs when a run ends cancelled, before the plan moves to history
        (where its node records go): the caller's last look at how far it got."""
        self.store = store
        self.tasks = tasks
        self.limits = dict(DEFAULT_LIMITS, **(limits or {}))
        self.retry = retry
        self.on_event = on_event
        self.poll_s = poll_s
        self.handle_signals = handle_signals
        self.halt_on = halt_on
        self.on_cancelled = on_cancelled
        self._stopping = threading.Event()
        self._signal: int | None = None
        self._cancelled = False
        self._settled: set[str] = set()

    # -- stopping ------------------------------------------------------------------------------

    def stop(self, signum: int | None = None) -> None:
        """Stop scheduling; running nodes are asked to stop and waited for."""
        if signum is not None and self._signal is None:
            self._signal = signum
        self._stopping.set()

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.warning("signal %d: stopping running nodes at their next stop point (again to abandon them)", signum)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        self.stop(signum)

    def _install_signals(self) -> dict[int, object]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    # -- running a plan ------------------------------------------------------------------------

    def run(self, plan: Plan | None = None, until: set[str] | None = None) -> RunResult:
        """Freeze `plan` (if new) and run it; with no plan, resume the frozen plan in progress.

        With `until`, only those nodes and their ancestors run; if they all end done, the run is
        "paused" and the plan stays in progress for a later run to go on with."""
        resuming = plan is None
        if resuming:
            plan = self.store.current_plan()
            if plan is None:
                raise NoUpdateInProgressError("no update in progress to resume")
        missing = sorted({n.kind for n in plan.nodes()} - set(self.tasks))
        if missing:  # refused before freezing: a plan nobody can run must not block the device
            raise PlanError(f"plan {plan.plan_id}: no task implements kind(s) {', '.join(missing)}")
        scope = self._scope(plan, until)
        if not resuming:
            plan = self.store.freeze(plan)
        self._stopping.clear()
        self._signal, self._cancelled = None, False
        self._settled = self._settled_nodes(plan)
        if _observers:
            records = self.store.records(plan.plan_id, plan.graph.nodes)
            _tell(lambda observer: observer.plan_started(plan, records))
        previous = self._install_signals()
        try:
            result = self._schedule(plan, scope)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if result.outcome == "cancelled" and self.on_cancelled:
            self.on_cancelled(plan, self.store.records(plan.plan_id, plan.graph.nodes))
        if result.outcome in ("completed", "cancelled"):
            self.store.finish(plan, result.outcome)
        _tell(lambda observer: observer.plan_ended(plan, result))
        return result

    @staticmethod
    def _scope(plan: Plan, until: set[str] | None) -> set[str]:
        """The nodes this run may run: all, or those of `until` and everything before them."""
        if until is None:
            return set(plan.graph.nodes)
        unknown = sorted(set(until) - set(plan.graph.nodes))
        if unknown:
            raise PlanError(f"plan {plan.plan_id}: no node(s) {', '.join(unknown)} to run until")
        return set().union(*(plan.ancestors(node_id) | {node_id} for node_id in until))

    def _settled_nodes(self, plan: Plan) -> set[str]:
        """Each point of no return recorded done, with every node before it: what is history."""
        settled: set[str] = set()
        for node in plan.nodes():
            if node.point_of_no_return and self.store.record(plan.plan_id, node.id).state == "done":
                settled |= plan.ancestors(node.id) | {node.id}
        return settled

    def _schedule(self, plan: Plan, scope: set[str]) -> RunResult:
        """Run the nodes of `scope` (closed under ancestors, so a node's dependencies are all in it)."""
        result = RunResult(plan.plan_id, "completed" if len(scope) == len(plan) else "paused")
        order = {node_id: i for i, node_id in enumerate(n for n in plan.order() if n in scope)}
        waiting = {node_id: plan.graph.in_degree(node_id) for node_id in order}
        ready = [(i, node_id) for node_id, i in order.items() if waiting[node_id] == 0]
        heapq.heapify(ready)
        busy = {resource: 0 for resource in self.limits}
        running: dict[Future, Node] = {}
        done = 0
        fatal: BaseException | None = None
        with ThreadPoolExecutor(max_workers=sum(self.limits.values()), thread_name_prefix="node") as pool:
            while ready or running:
                if not self._stopping.is_set() and self.store.cancel_requested(plan.plan_id):
                    self._cancelled = True
                    self.stop()
                if not self._stopping.is_set():
                    self._launch(plan, pool, ready, busy, running, result)
                if not running:
                    break
                finished, _ = wait(running, timeout=self.poll_s, return_when=FIRST_COMPLETED)
                for future in finished:
                    node = running.pop(future)
                    busy[node.resource] -= 1
                    try:
                        outcome = future.result()
                    except BaseException as exc:  # the store failed, not the task: stop, then raise
                        fatal = fatal or exc
                        self.stop()
                        continue
                    if isinstance(outcome, BaseException):
                        result.failed[node.id] = outcome
                        if self.halt_on is not None and self.halt_on(outcome):
                            self.stop()
                    elif outcome == "done":
                        done += 1
                        for child in (c for c in plan.dependents(node.id) if c in order):
                            waiting[child] -= 1
                            if waiting[child] == 0:
                                heapq.heappush(ready, (order[child], child))
        if fatal is not None:
            raise fatal
        if self._cancelled:
            result.outcome = "cancelled"
        elif result.failed:
            result.outcome = "failed"
        elif done < len(order):
            result.outcome, result.signal = "interrupted", self._signal
        return result

    def _launch(self, plan: Plan, pool: ThreadPoolExecutor, ready: list, busy: dict[str, int],
                running: dict[Future, Node], result: RunResult) -> None:
        """Start every ready node whose resource class has room, in plan order."""
        deferred = []
        while ready:
            item = heapq.heappop(ready)
            node = plan.node(item[1])
            if busy.setdefault(node.resource, 0) >= self.limits.get(node.resource, 1):
                deferred.append(item)
                continue
            busy[node.resource] += 1
            running[pool.submit(self._visit, plan.plan_id, node, result)] = node
        for item in deferred:
            heapq.heappush(ready, item)

    # -- one node ------------------------------------------------------------------------------

    def _emit(self, event: NodeEvent) -> None:
        if self.on_event:
            _safely(lambda: self.on_event(event))
        _tell(lambda observer: observer.node_event(event))

    def _visit(self, plan_id: str, node: Node, result: RunResult) -> str | BaseException:
        """Check, and if needed run, one node. Returns "done", "abandoned", or the task's exception."""
        task = self.tasks[node.kind]
        record = self.store.record(plan_id, node.id)
        try:
            if node.id in self._settled or task.is_done(node):
                if record.state != "done":
                    now = time.time()
                    self._save(plan_id, node, record, state="done", started=record.started or now, ended=now,
                               bytes=node.size, error=None, exit_code=None)
                self._emit(NodeEvent(node, "done", node.size, node.size or None, already=True))
                return "done"
            ctx = TaskContext(node, self._stopping, self._progress_sink)
            ctx.stop_point()
            result.ran.append(node.id)
            record.started = time.time()
            for attempt in self._retrying(node):
                with attempt:
                    ctx.stop_point()
                    self._save(plan_id, node, record, state="running", attempts=record.attempts + 1, error=None)
                    self._emit(NodeEvent(node, "running", 0, node.size or None))
                    task.run(node, ctx)
        except Exception as exc:  # noqa: BLE001 - every task failure is recorded and reported
            return self._failed(plan_id, node, record, exc)
        self._save(plan_id, node, record, state="done", ended=time.time(), bytes=ctx.done_bytes or node.size)
        self._emit(NodeEvent(node, "done", record.bytes, node.size or None))
        return "done"

    def _failed(self, plan_id: str, node: Node, record: NodeRecord, exc: Exception) -> str | Exception:
        if self._stopping.is_set() and (isinstance(exc, Interrupted) or record.state == "running"):
            if record.state == "running":  # stopped mid-way: pending again, re-checked on resume
                self._save(plan_id, node, record, state="pending", ended=time.time())
            return "abandoned"
        log.error("node %s failed: %s", node.id, exc)
        try:
            self._save(plan_id, node, record, state="failed", ended=time.time(),
                       error=f"{exc.__class__.__name__}: {exc}",
                       exit_code=exit_code_of(exc))
        except NoSpaceError as full:  # a full disk failed the node and its record alike: report the node's
            log.error("could not record that node %s failed: %s", node.id, full)  # (resume re-checks it)
        self._emit(NodeEvent(node, "failed", error=exc))
        return exc

    def _save(self, plan_id: str, node: Node, record: NodeRecord, **changes: object) -> None:
        for key, value in changes.items():
            setattr(record, key, value)
        self.store.put_record(plan_id, node.id, record)

    def _progress_sink(self, node: Node, done: int, total: int | None) -> None:
        self._emit(NodeEvent(node, "progress", done, total))

    def _retrying(self, node: Node) -> Retrying:
        policy = self.retry

        def before_sleep(state) -> None:
            error = state.outcome.exception()
            log.warning("node %s: transient failure, retrying: %s", node.id, error)
            self._emit(NodeEvent(node, "retrying", error=error))

        return Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, TransientError) and not self._stopping.is_set()),
            stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.budget_s),
            wait=wait_random_exponential(multiplier=policy.base_s, max=policy.max_wait_s),
            sleep=self._stopping.wait,
            before_sleep=before_sleep,
            reraise=True,
        )
