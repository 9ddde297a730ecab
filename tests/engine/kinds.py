"""Task kinds used only by the engine tests: real files, real fsyncs, and hooks to kill or fail.

`write` appends its node id to `runs.log` (fsynced) every time it runs, then writes its output
file atomically; `is_done` checks the output. Counting lines of `runs.log` therefore counts
runs. The hook `ENGINE_TEST_KILL_AT=<node id>@<phase>` makes the task SIGKILL its own process
at a chosen point: `begin` (before anything, i.e. the boundary after the previous node's
record), `logged` (the run is logged, the effect not yet written) or `effect` (the effect is
durable, the engine has not yet recorded the node done).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from fioup_flow.durable import write_atomic
from fioup_flow.errors import FetchError
from fioup_flow.task import Node, TaskContext, TransientError

KILL_ENV = "ENGINE_TEST_KILL_AT"


def kill_point(node: Node, phase: str) -> None:
    if os.environ.get(KILL_ENV) == f"{node.id}@{phase}":
        os.kill(os.getpid(), signal.SIGKILL)


def append_line(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def write_node(node_id: str, content: str | None = None, sleep: float = 0.0) -> Node:
    name = node_id.replace(":", "_")
    return Node(node_id, "write", {"name": name, "content": content or f"effect of {node_id}\n", "sleep": sleep},
                resource="disk", size=len(content or node_id))


class WriteFile:
    """Writes `out/<name>` atomically; logs each run in `runs.log`."""

    kind = "write"

    def __init__(self, work: Path):
        self.work = Path(work)
        (self.work / "out").mkdir(parents=True, exist_ok=True)

    def output(self, node: Node) -> Path:
        return self.work / "out" / node.params["name"]

    def is_done(self, node: Node) -> bool:
        path = self.output(node)
        return path.exists() and path.read_text() == node.params["content"]

    def run(self, node: Node, ctx: TaskContext) -> None:
        kill_point(node, "begin")
        append_line(self.work / "runs.log", node.id)
        kill_point(node, "logged")
        time.sleep(node.params.get("sleep", 0.0))
        write_atomic(self.output(node), node.params["content"].encode())
        ctx.progress(len(node.params["content"]))
        kill_point(node, "effect")


class AlwaysFails:
    """Fails at once with a FetchError (exit 40), or the OSError of `params["errno"]`: a permanent failure."""

    kind = "fail"

    def is_done(self, node: Node) -> bool:
        return False

    def run(self, node: Node, ctx: TaskContext) -> None:
        if "errno" in node.params:
            raise OSError(node.params["errno"], os.strerror(node.params["errno"]))
        raise FetchError(node.params["message"])


class Flaky(WriteFile):
    """Raises TransientError for the first `fails` attempts (counted in a file), then writes."""

    kind = "flaky"

    def run(self, node: Node, ctx: TaskContext) -> None:
        tries = self.work / f"{node.params['name']}.tries"
        append_line(tries, "x")
        if len(tries.read_text().splitlines()) <= node.params["fails"]:
            raise TransientError(f"blip {len(tries.read_text().splitlines())}")
        super().run(node, ctx)


def stream_node(node_id: str, chunks: int, delay: float) -> Node:
    return Node(node_id, "stream", {"name": node_id.replace(":", "_"), "chunks": chunks, "delay": delay},
                resource="network", size=chunks)


class Stream:
    """A download in miniature: appends lines `0..chunks-1` to `out/<name>.part`, one every
    `delay` s through `ctx.checked`, going on from the lines already there; then renames it."""

    kind = "stream"

    def __init__(self, work: Path):
        self.out = Path(work) / "out"
        self.out.mkdir(parents=True, exist_ok=True)

    def partial(self, node: Node) -> Path:
        return self.out / f"{node.params['name']}.part"

    def is_done(self, node: Node) -> bool:
        return (self.out / node.params["name"]).exists()

    def run(self, node: Node, ctx: TaskContext) -> None:
        part = self.partial(node)
        kept = len(part.read_text().splitlines()) if part.exists() else 0
        with open(part, "a") as f:
            for i in ctx.checked(range(kept, node.params["chunks"])):
                time.sleep(node.params["delay"])
                f.write(f"{i}\n")
                f.flush()
        os.replace(part, self.out / node.params["name"])


def all_kinds(work: Path) -> dict:
    return {t.kind: t for t in (WriteFile(work), AlwaysFails(), Flaky(work), Stream(work))}
