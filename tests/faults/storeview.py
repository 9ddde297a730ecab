"""The checkpoint store, seen without writing a byte to the device's disk.

Opening a `CheckpointStore` is not a look: it writes its settings and marker and syncs the
folder. Done every 30 ms on the power-cut mount while an update runs, that could make durable by
accident what the product forgot to sync. Even a read-only SQLite connection is not quite a look:
it opens the `-wal` read-write (creating it when missing), chowns it when run as root, and maps
the `-shm`, whose closing writes back the agent's own dirty wal-index pages.

So the view reads the database and its `-wal` as plain files (open, read, close: no changing
call reaches the filesystem) into a folder of its own, and asks SQLite there. A copy taken while
the agent commits may be torn: the files' size and mtime are compared before and after, and a
copy during which either changed is taken again. The store's keys and values are strings kept raw
in diskcache's `Cache` table (`key`, `raw`, `value`): `current`, `plan:<id>`, `node:<plan>:<node>`,
`history`.

The power-cut harness points it at the backing folder of the mount (the durable state, which the
device never sees being read), the crash tests at the store itself.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from fioup_flow.checkpoint import BAD_TARGETS
from fioup_flow.graph import Plan

DB = "cache.db"  # diskcache's database file
ATTEMPTS = 20


class StoreView:
    """Read-only answers about the checkpoint store in `folder` (`<sota>/flow/checkpoint`)."""

    def __init__(self, folder: Path) -> None:
        self.db = Path(folder) / DB

    def values(self, *keys: str) -> dict[str, str]:
        """The raw string values of `keys` that are in the store (none while it cannot be read)."""
        files = [self.db, self.db.with_name(DB + "-wal")]
        for _ in range(ATTEMPTS):
            with tempfile.TemporaryDirectory(prefix="storeview-") as tmp:
                before = _stamps(files)
                if before[0] is None:
                    return {}
                try:
                    for path, stamp in zip(files, before):
                        if stamp is not None:
                            shutil.copyfile(path, Path(tmp, path.name))
                except OSError:
                    continue  # removed meanwhile (a checkpoint's -wal): look again
                if _stamps(files) != before:
                    continue  # a commit landed while copying
                try:
                    return _rows(Path(tmp, DB), keys)
                except sqlite3.Error:
                    continue  # caught mid-creation: look again
        return {}

    def get(self, key: str) -> str | None:
        return self.values(key).get(key)

    def current_plan_id(self) -> str | None:
        return self.get("current")

    def plan(self, plan_id: str) -> Plan | None:
        text = self.get(f"plan:{plan_id}")
        return Plan.from_json(text) if text else None

    def current_plan(self) -> Plan | None:
        """The frozen plan of the update in progress, if any."""
        plan_id = self.current_plan_id()
        return self.plan(plan_id) if plan_id else None

    def node_state(self, plan_id: str, node_id: str) -> str:
        raw = self.get(f"node:{plan_id}:{node_id}")
        return json.loads(raw)["state"] if raw else "pending"

    def node_states(self, plan: Plan) -> dict[str, str]:
        """Each node of `plan` and its state, read in one look."""
        raw = self.values(*(f"node:{plan.plan_id}:{node}" for node in plan.graph.nodes))
        return {node: json.loads(raw[key])["state"] if (key := f"node:{plan.plan_id}:{node}") in raw else "pending"
                for node in plan.graph.nodes}

    def history(self) -> list[dict[str, Any]]:
        """Finished updates, newest first."""
        return json.loads(self.get("history") or "[]")

    def bad_targets(self) -> dict[str, dict[str, Any]]:
        """The Targets marked bad, by name (see fioup_flow.badtargets)."""
        return json.loads(self.get(BAD_TARGETS) or "{}")


def _stamps(files: list[Path]) -> list[tuple[int, int, int] | None]:
    stamps = []
    for path in files:
        try:
            info = path.stat()
            stamps.append((info.st_ino, info.st_size, info.st_mtime_ns))
        except FileNotFoundError:
            stamps.append(None)
    return stamps


def _rows(db: Path, keys: tuple[str, ...]) -> dict[str, str]:
    connection = sqlite3.connect(db, timeout=1.0, isolation_level=None)
    try:
        marks = ",".join("?" * len(keys))
        rows = connection.execute(f"SELECT key, value FROM Cache WHERE raw = 1 AND key IN ({marks})", keys)
        return {key: value for key, value in rows}
    finally:
        connection.close()
