"""The task protocol: what a node of an update graph is, and what the engine asks of each task kind.

A node names *what* to do (kind + plain-data parameters); a task kind knows *how*. Keeping the
two apart is what lets a plan be frozen as JSON before the first side effect and run later by a
process that never saw the compiler: everything a task needs at run time is in `Node.params` or
in the objects the task was constructed with (clients, paths).

The engine guarantees at-least-once execution: a power cut between a task's effect and the
durable "done" record runs the task again. So `run` must be idempotent, and `is_done` is how a
task tells the engine its effect is already in place (Luigi's `complete()`): it looks at the
world (store, disk, Docker), never only at the checkpoint, because the checkpoint is a hint and
the world is the truth.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

RESOURCES = ("network", "docker", "disk", "cpu")


@dataclass(frozen=True)
class Node:
    """One step of an update. `id` is stable and says what it does (`fetch:sha256:<hex>`, `stop:<app>`).

    `resource` is the scheduling class that bounds how many such nodes run at once; `size` is the
    number of bytes the node is expected to move, for progress only.

    `point_of_no_return` marks the node after which the update is history: once it is recorded
    done, the engine trusts it and every node before it without looking at the world again (what
    changes there later is the next update's business), and re-checks only the nodes after it.
    """

    id: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    resource: str = "cpu"
    size: int = 0
    point_of_no_return: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = {"id": self.id, "kind": self.kind, "params": self.params, "resource": self.resource, "size": self.size}
        if self.point_of_no_return:  # only where set: every other node freezes to the bytes it always did
            data["point_of_no_return"] = True
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Node:
        """A frozen node; one frozen before a field existed gets the field's default."""
        return cls(id=data["id"], kind=data["kind"], params=data.get("params", {}),
                   resource=data.get("resource", "cpu"), size=int(data.get("size", 0)),
                   point_of_no_return=bool(data.get("point_of_no_return", False)))


def short_id(node_id: str) -> str:
    """A node id with digests and uuids cut to 12 characters, for a terminal."""
    return re.sub(r"(sha256:[0-9a-f]{12})[0-9a-f]{52}|([0-9a-f]{8})-[0-9a-f-]{27}", lambda m: (m[1] or m[2]) + "…",
                  node_id)


ProgressSink = Callable[[Node, int, "int | None"], None]
T = TypeVar("T")


class Interrupted(Exception):
    """The runner is stopping (a signal, a cancel): the node was not started, or its task stopped
    early and kept its partial work (a download's bytes, synced) for the next attempt. Never a
    failure: the engine puts the node back to pending, and a resume re-checks it."""


class TaskContext:
    """What a running task may use from the engine: progress reports, the stop request, a logger.

    `cancelled` is set when the update is cancelled or the runner is asked to stop. A long task
    stops at its next safe point through `checked` (between the chunks of a stream) or `sleep`
    (a wait), which raise Interrupted; a step that must not be cut short (a `compose up`) simply
    does not look, and the engine waits for it to finish.
    """

    def __init__(self, node: Node, cancelled: threading.Event, progress_sink: ProgressSink | None = None,
                 logger: logging.Logger | None = None):
        self.node = node
        self.cancelled = cancelled
        self.logger = logger or logging.getLogger(f"fioup_flow.task.{node.kind}")
        self._sink = progress_sink
        self.done_bytes = 0

    def progress(self, done_bytes: int, total: int | None = None) -> None:
        """Report bytes done so far for this node (absolute, not a delta)."""
        self.done_bytes = done_bytes
        if self._sink:
            self._sink(self.node, done_bytes, total if total is not None else (self.node.size or None))

    def should_stop(self) -> bool:
        return self.cancelled.is_set()

    def stop_point(self) -> None:
        """Raise Interrupted if the runner is stopping."""
        if self.should_stop():
            raise Interrupted(f"{self.node.id}: stopped, the runner is stopping")

    def checked(self, items: Iterable[T]) -> Iterator[T]:
        """`items` passed on, with a stop point before the first and after each one is consumed:
        a stream stops at its next chunk, and whatever was handed on was dealt with."""
        self.stop_point()
        for item in items:
            yield item
            self.stop_point()

    def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or raise Interrupted as soon as the runner is stopping."""
        if self.cancelled.wait(seconds):
            self.stop_point()


class Task(Protocol):
    """A task kind. Constructed with its dependencies; the engine gets a `dict[kind, Task]`."""

    kind: str

    def is_done(self, node: Node) -> bool:
        """Cheaply check whether the node's effect is already in place in the world."""
        ...

    def run(self, node: Node, ctx: TaskContext) -> None:
        """Bring the node's effect about. Idempotent; raise on failure."""
        ...


class TransientError(Exception):
    """A failure that may heal on its own (network blip, 5xx): the engine retries it with backoff.

    Any other exception fails the node at once. Subclass it together with a `FioupFlowError`
    (e.g. `class Interrupted(FetchError, TransientError)`) to keep the exit code when retries run out.
    """
