"""The checkpoint store: the frozen plan of the update in progress, one record per node, history.

It lives in a diskcache (SQLite) opened with durable settings (`durable.open_cache`): no
eviction, `synchronous=FULL` so every commit survives a power cut, and every value inline in
SQLite (diskcache writes big values to side files without fsync). Each state change is one
small write, one transaction; the plan is written once, when it is frozen.

A store that cannot be read is never guessed around: a corrupt or truncated database raises
`CheckpointStoreError` (exit 5) naming the file and the way out, `fioup-flow cancel
--discard-state`, which moves the folder aside (kept for inspection) and starts afresh. A
database that vanished or was emptied is caught by a marker file written beside it when the
store was created: the marker names a store id the database must hold. The frozen plan carries
a SHA-256, checked whenever it is read, since SQLite has no checksums of its own. A write that
fails because the disk is full is not damage (SQLite rolls it back): it raises `NoSpaceError`
(exit 41), and `resume` goes on once space is freed.

Each plan also has its current *attempt* (a number and the correlation id its reports carry):
fioup opens a new update, with a new id, each time a failed update is tried again, so the
gateway's history reads as what happened. Attempt 1 begins when the plan is frozen, under the
plan's own id; a run that starts after a run of the plan ended failed begins the next attempt,
under a fresh id; a run cut short by a signal or a power cut goes on with the same attempt.

The store also remembers the Targets that failed for good on this device (`bad_targets`, read
and written through `fioup_flow.badtargets`): they live in the same SQLite database so that
ending a failed update, marking its Target bad and freezing the plan that undoes it are one
transaction (`hand_over`), and a power cut between them cannot leave one without the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import diskcache

from fioup_flow.durable import (
    DURABLE_CACHE_SETTINGS,
    fsync_dir,
    full_disk_as_no_space,
    open_cache,
    write_atomic,
)
from fioup_flow.errors import CheckpointStoreError, InvalidOngoingUpdateError
from fioup_flow.graph import Plan, dumps, new_plan_id

STATES = ("pending", "running", "done", "failed", "skipped")
HISTORY_LIMIT = 100
MARKER = "store.json"
DISCARD_HINT = "fioup-flow cancel --discard-state"
BAD_TARGETS = "bad_targets"


def store_path(flow_dir: Path) -> Path:
    """Where the checkpoint store lives under fioup-flow's state folder (`Config.flow_dir`)."""
    return Path(flow_dir) / "checkpoint"


@dataclass
class NodeRecord:
    """Where one node stands. Absent from the store means pending, attempted never."""

    state: str = "pending"
    attempts: int = 0
    started: float | None = None
    ended: float | None = None
    bytes: int = 0
    error: str | None = None
    exit_code: int | None = None

    @property
    def duration(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


@dataclass(frozen=True)
class Attempt:
    """One try at a plan: its number, the correlation id of its reports, and how it failed, if it did.

    `failed` ({"node", "error"}) is set when a run of this attempt ended failed: the next run
    begins the next attempt.
    """

    number: int
    correlation_id: str
    failed: dict[str, str] | None = None


class CheckpointStore:
    """The durable state of fioup-flow's updates in folder `path` (normally `flow_dir/checkpoint`)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.db_file = self.path / diskcache.core.DBNAME
        marker = self._read_marker()
        if marker is not None and not self.db_file.exists():
            raise self._error("the database file is missing")
        with self._guard():
            self.cache = open_cache(self.path)
            ((check,),) = self.cache._sql("PRAGMA quick_check").fetchall()  # noqa: SLF001 - no public API
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            self._check_identity(marker)
            self._check_settings()

    # -- opening -------------------------------------------------------------------------------

    def _error(self, reason: str) -> CheckpointStoreError:
        return CheckpointStoreError(
            f"checkpoint store {self.db_file} is unreadable ({reason}); resuming from it could do the "
            f"wrong thing. Way out: `{DISCARD_HINT}` moves {self.path} aside and forgets the update "
            f"in progress (its effects stay; run the update again)")

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn SQLite and decoding failures into CheckpointStoreError, never a silent wrong resume."""
        try:
            with full_disk_as_no_space(self.path):
                yield
        except (sqlite3.DatabaseError, ValueError, KeyError, TypeError) as exc:
            raise self._error(f"{exc.__class__.__name__}: {exc}") from exc

    def _read_marker(self) -> str | None:
        try:
            return json.loads((self.path / MARKER).read_text())["store_id"]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise self._error(f"marker {MARKER} is damaged: {exc}") from exc

    def _check_identity(self, marker: str | None) -> None:
        stored = self.cache.get("store_id")
        if marker is None:
            if stored is None:  # a new store (or one whose marker write a crash cut short)
                stored = uuid.uuid4().hex
                self.cache.set("store_id", stored)
            write_atomic(self.path / MARKER, dumps({"store_id": stored}).encode())
            fsync_dir(self.path.parent)  # the store's own folder entry must survive a power cut too
        elif stored != marker:
            raise self._error("the database was emptied or replaced: it lacks the id its marker names")

    def _check_settings(self) -> None:
        for key, value in self.settings().items():
            if value != DURABLE_CACHE_SETTINGS[key]:
                raise self._error(f"setting {key} is {value!r}, not {DURABLE_CACHE_SETTINGS[key]!r}")

    def settings(self) -> dict[str, Any]:
        """The durability settings actually in force (the live pragma, not just what was asked)."""
        ((synchronous,),) = self.cache._sql("PRAGMA synchronous").fetchall()  # noqa: SLF001
        return {
            "eviction_policy": self.cache.reset("eviction_policy"),
            "sqlite_synchronous": synchronous,
            "disk_min_file_size": self.cache.disk.min_file_size,
        }

    def close(self) -> None:
        self.cache.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def discard(path: Path) -> Path | None:
        """Move the store folder aside (kept for inspection); the next open starts an empty store."""
        path = Path(path)
        if not path.exists():
            return None
        aside = path.with_name(f"{path.name}.discarded-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}")
        path.rename(aside)
        fsync_dir(path.parent)
        return aside

    # -- the plan in progress ------------------------------------------------------------------

    def current_plan_id(self) -> str | None:
        with self._guard():
            return self.cache.get("current")

    def frozen_json(self, plan_id: str) -> str | None:
        with self._guard():
            return self.cache.get(f"plan:{plan_id}")

    def current_plan(self) -> Plan | None:
        data = self.current_frozen()
        return None if data is None else Plan.from_data(data)

    def current_frozen(self) -> dict[str, Any] | None:
        """The update in progress as frozen (plan id, meta, nodes sorted by id, edges), checked against
        its checksum: what reads the plan without running it (`status`) needs no graph built."""
        plan_id = self.current_plan_id()
        if plan_id is None:
            return None
        text = self.frozen_json(plan_id)
        if text is None:
            raise self._error(f"plan {plan_id} is in progress but its frozen plan is missing")
        with self._guard():
            if hashlib.sha256(text.encode()).hexdigest() != self.cache.get(f"plan_sha256:{plan_id}"):
                raise self._error(f"the frozen plan {plan_id} does not match its checksum")
            return json.loads(text)

    def freeze(self, plan: Plan) -> Plan:
        """Persist `plan` as the update in progress (one transaction) and return the frozen plan.

        Freezing the plan already in progress again is a no-op if its bytes match; a different
        plan while one is in progress is refused: the store never re-plans silently.
        """
        text = plan.to_json()
        with self._guard(), self.cache.transact():
            current = self.cache.get("current")
            if current is not None:
                frozen = self.cache.get(f"plan:{current}")
                if current != plan.plan_id or frozen != text:
                    raise InvalidOngoingUpdateError(
                        f"update {current} is in progress (target {Plan.from_json(frozen).meta.get('target')}); "
                        f"resume it or cancel it before starting another")
                return Plan.from_json(frozen)
            self._put_plan(plan.plan_id, text)
        return Plan.from_json(text)

    def _put_plan(self, plan_id: str, text: str) -> None:
        """Write a frozen plan as the one in progress; inside the caller's transaction."""
        self.cache.set(f"plan:{plan_id}", text)
        self.cache.set(f"plan_sha256:{plan_id}", hashlib.sha256(text.encode()).hexdigest())
        self.cache.set(f"frozen_at:{plan_id}", time.time())
        self.cache.set(f"attempt:{plan_id}", dumps(asdict(Attempt(1, plan_id))))
        self.cache.set("current", plan_id)

    # -- attempts ------------------------------------------------------------------------------

    def attempt(self, plan_id: str) -> Attempt:
        """The current attempt at `plan_id` (attempt 1, under the plan's id, for a plan frozen before
        attempts were recorded: its reports went out under that id)."""
        with self._guard():
            raw = self.cache.get(f"attempt:{plan_id}")
        return Attempt(**json.loads(raw)) if raw is not None else Attempt(1, plan_id)

    def begin_attempt(self, plan_id: str) -> Attempt:
        """At the start of a run: after a failed attempt, the next one, with a fresh correlation id,
        durably before the run's first report; otherwise the attempt goes on."""
        with self._guard(), self.cache.transact():
            attempt = self.attempt(plan_id)
            if attempt.failed is not None:
                attempt = Attempt(attempt.number + 1, new_plan_id())
                self.cache.set(f"attempt:{plan_id}", dumps(asdict(attempt)))
        return attempt

    def fail_attempt(self, plan_id: str, node_id: str, error: str, permanent: bool = False) -> Attempt:
        """Record that the current attempt ended failed at `node_id` (the next run begins another).
        `permanent`: the failure was the Target's own (`badtargets.is_permanent`), kept so that a run
        after a power cut still knows it, with the exception gone."""
        failed = {"node": node_id, "error": error, **({"permanent": True} if permanent else {})}
        with self._guard(), self.cache.transact():
            attempt = Attempt(**dict(asdict(self.attempt(plan_id)), failed=failed))
            self.cache.set(f"attempt:{plan_id}", dumps(asdict(attempt)))
        return attempt

    # -- node records --------------------------------------------------------------------------

    def record(self, plan_id: str, node_id: str) -> NodeRecord:
        with self._guard():
            raw = self.cache.get(f"node:{plan_id}:{node_id}")
            return NodeRecord(**json.loads(raw)) if raw is not None else NodeRecord()

    def records(self, plan_id: str, node_ids: Iterable[str]) -> dict[str, NodeRecord]:
        return {node_id: self.record(plan_id, node_id) for node_id in node_ids}

    def put_record(self, plan_id: str, node_id: str, record: NodeRecord) -> None:
        """Durably write one node's record: one small SQLite transaction, synced before return."""
        if record.state not in STATES:
            raise ValueError(f"unknown node state {record.state!r}")
        with self._guard():
            self.cache.set(f"node:{plan_id}:{node_id}", dumps(asdict(record)))

    # -- cancel --------------------------------------------------------------------------------

    def request_cancel(self, plan_id: str, reason: str | None = None) -> None:
        """Ask the runner of `plan_id` to cancel it; `reason`, for a cancel fioup-flow decides itself,
        goes to the history entry and the report."""
        with self._guard():
            self.cache.set(f"cancel:{plan_id}", reason or True)

    def cancel_requested(self, plan_id: str) -> bool:
        with self._guard():
            return bool(self.cache.get(f"cancel:{plan_id}", False))

    def cancel_reason(self, plan_id: str) -> str | None:
        """Why fioup-flow asked to cancel `plan_id`; None for a person's cancel, or none asked."""
        with self._guard():
            flag = self.cache.get(f"cancel:{plan_id}")
        return flag if isinstance(flag, str) else None

    # -- finishing and history -----------------------------------------------------------------

    def finish(self, plan: Plan, outcome: str, reason: str | None = None) -> dict[str, Any]:
        """Move `plan` from in-progress to history with `outcome` (completed, cancelled) and, for a
        cancel fioup-flow decided itself, its `reason` (by default the one its cancel request gave);
        one transaction."""
        return self.hand_over(plan, outcome, reason)

    def hand_over(self, plan: Plan, outcome: str, reason: str | None = None, bad: dict[str, Any] | None = None,
                  then: Plan | None = None) -> dict[str, Any]:
        """`finish`, and in the same transaction record `bad` (a bad Target's entry, see
        `fioup_flow.badtargets`) and freeze `then` as the plan in progress: a power cut leaves
        either the failed update in progress, or its history entry, its Target bad and the plan
        that follows it frozen, never a part of these."""
        reason = reason or self.cancel_reason(plan.plan_id)
        records = self.records(plan.plan_id, plan.graph.nodes)
        attempt = self.attempt(plan.plan_id)
        counts = {state: 0 for state in STATES}
        for record in records.values():
            counts[record.state] += 1
        with self._guard(), self.cache.transact():
            entry = {
                "plan_id": plan.plan_id, "target": plan.meta.get("target"), "version": plan.meta.get("version"),
                "kind": plan.meta.get("kind", "update"), "rollback_of": plan.meta.get("rollback_of"),
                "outcome": outcome, "reason": reason, "started": self.cache.get(f"frozen_at:{plan.plan_id}"),
                "ended": time.time(), "attempts": attempt.number, "correlation_id": attempt.correlation_id,
                "counts": counts, "failed": {n: r.error for n, r in records.items() if r.state == "failed"},
            }
            history = json.loads(self.cache.get("history", "[]"))
            self.cache.set("history", dumps(([entry] + history)[:HISTORY_LIMIT]))
            for node_id in plan.graph.nodes:
                self.cache.delete(f"node:{plan.plan_id}:{node_id}")
            for key in ("plan", "plan_sha256", "frozen_at", "cancel", "attempt"):
                self.cache.delete(f"{key}:{plan.plan_id}")
            if self.cache.get("current") == plan.plan_id:
                self.cache.delete("current")
            if bad is not None:
                self._set_bad(bad["name"], bad)
            if then is not None:
                self._put_plan(then.plan_id, then.to_json())
        return entry

    # -- failed attempts per Target (the daemon's count, across plans) ---------------------------

    def failed_attempts(self, target: str) -> dict[str, float]:
        """The failed attempts at updates to Target `target` since the count was last cleared, each
        correlation id with when it was counted: every plan to that Target counts, a plan cancelled
        and made again too."""
        with self._guard():
            return json.loads(self.cache.get(f"target_failed:{target}", "{}"))

    def note_failed_attempt(self, target: str, correlation_id: str, at: float) -> dict[str, float]:
        """Count the failed attempt `correlation_id` at `target`, once however often it is noted
        (a crash between a failure and its count is made good by noting it again)."""
        with self._guard(), self.cache.transact():
            failed = self.failed_attempts(target)
            if correlation_id not in failed:
                failed[correlation_id] = at
                self.cache.set(f"target_failed:{target}", dumps(failed))
        return failed

    def clear_failed_attempts(self, target: str) -> None:
        with self._guard():
            self.cache.delete(f"target_failed:{target}")

    def history(self, limit: int = HISTORY_LIMIT) -> list[dict[str, Any]]:
        """Past updates, newest first."""
        with self._guard():
            return json.loads(self.cache.get("history", "[]"))[:limit]

    def frozen_at(self, plan_id: str) -> float | None:
        with self._guard():
            return self.cache.get(f"frozen_at:{plan_id}")

    # -- bad Targets (see fioup_flow.badtargets) ------------------------------------------------

    def bad_targets(self) -> dict[str, dict[str, Any]]:
        """Target name -> its entry, for every Target marked bad on this device."""
        with self._guard():
            return json.loads(self.cache.get(BAD_TARGETS, "{}"))

    def mark_bad(self, entry: dict[str, Any]) -> None:
        with self._guard(), self.cache.transact():
            self._set_bad(entry["name"], entry)

    def clear_bad(self, name: str) -> None:
        with self._guard(), self.cache.transact():
            self._set_bad(name, None)

    def _set_bad(self, name: str, entry: dict[str, Any] | None) -> None:
        """Set or drop one bad Target's entry; inside the caller's transaction."""
        bad = json.loads(self.cache.get(BAD_TARGETS, "{}"))
        if entry is None:
            bad.pop(name, None)
        else:
            bad[name] = entry
        self.cache.set(BAD_TARGETS, dumps(bad))
