"""`--progress json`: one JSON object per line on stdout, for a program that drives a screen or an LED.

Every line has the same keys (the README documents them; `format_version` changes only when a
key changes meaning or goes away, never when one is added): the figures of `progress.Snapshot`,
what the line is about (`event`), and the node, outcome, exit code and error where they apply.
Byte progress is at most one line every `TICK_S`; every node event and every run's start and end
is a line of its own; the last line is the summary, with the exit code the process ends with.
A reader that goes away costs the update nothing: the lines go to /dev/null from then on.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, TextIO

from fioup_flow.cli.progress import Summary
from fioup_flow.engine import NodeEvent
from fioup_flow.progress import Snapshot

FORMAT_VERSION = 1
TICK_S = 0.5


class JsonLines:
    tick_s = TICK_S

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def _line(self, event: str, snap: Snapshot, *, node: NodeEvent | None = None, outcome: str | None = None,
              exit_code: int | None = None, error: str | None = None) -> None:
        data: dict[str, Any] = {
            "format_version": FORMAT_VERSION, "event": event, "time": round(time.time(), 3), **snap.as_json(),
            "node": node.node.id if node else None, "state": node.state if node else None,
            "outcome": outcome, "exit_code": exit_code,
            "error": error if error is not None else (str(node.error) if node and node.error else None),
        }
        try:
            self.out.write(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")
            self.out.flush()
        except BrokenPipeError:  # also what the interpreter flushes at exit, hence the descriptor itself
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())

    def begin(self, snap: Snapshot) -> None:
        self._line("start", snap)

    def plan(self, snap: Snapshot, first: bool) -> None:
        self._line("plan", snap)

    def node(self, snap: Snapshot, event: NodeEvent) -> None:
        self._line("node", snap, node=event)

    def tick(self, snap: Snapshot, event: NodeEvent) -> None:
        self._line("progress", snap, node=event)

    def ended(self, snap: Snapshot, outcome: str) -> None:
        self._line("ended", snap, outcome=outcome)

    def summary(self, snap: Snapshot, summary: Summary) -> None:
        self._line("summary", snap, outcome=summary.outcome, exit_code=summary.exit_code, error=summary.error)
