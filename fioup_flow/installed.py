"""What the device runs now: the Target of the last update that completed.

Written once, atomically, when an update completes, and read by `check`, `status` and the
planner. Keeping it as one small file (rather than deriving it from the update history) means
the answer to "what runs here" never depends on a long history or on the checkpoint store.
"""

from __future__ import annotations

import json
from pathlib import Path

from fioup_flow.durable import write_atomic
from fioup_flow.targets import App, Target

CURRENT_FILE = "current.json"


def current_target(flow_dir: Path) -> Target | None:
    """The Target the device was last updated to, or None for a fresh device."""
    path = flow_dir / CURRENT_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    apps = tuple(App(a["name"], a["uri"]) for a in data.get("apps", []))
    return Target(data["name"], int(data["version"]), apps, data.get("custom", {}))


def save_current_target(flow_dir: Path, target: Target) -> None:
    data = dict(target.as_json(), custom=target.custom)
    write_atomic(flow_dir / CURRENT_FILE, json.dumps(data, sort_keys=True).encode())
