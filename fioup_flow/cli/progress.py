"""What a person sees while an update runs: one line per node that finished, failed or retried."""

from __future__ import annotations

from rich.console import Console

from fioup_flow.engine import NodeEvent
from fioup_flow.graph import Plan
from fioup_flow.render import short_id


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


class NodeLog:
    """An executor event hook printing to stderr (colours on a terminal, plain text otherwise)."""

    def __init__(self, total: int, quiet: bool = False):
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.total = total
        self.finished = 0
        self.quiet = quiet

    def next_plan(self, plan: Plan) -> None:
        """Another plan runs after the first (a rollback): say which, and count its nodes afresh."""
        self.total, self.finished = len(plan), 0
        what = "Rolling back" if plan.meta.get("kind") == "rollback" else "Running"
        self.console.print(f"[yellow]{what}[/] to {plan.meta['target']} (version {plan.meta['version']}): "
                           f"{len(plan)} nodes")

    def __call__(self, event: NodeEvent) -> None:
        if event.state == "done":
            self.finished += 1
            if self.quiet or event.already:
                return
            size = f" ({human_bytes(event.done_bytes)})" if event.node.kind == "fetch" else ""
            self.console.print(f"[green]done[/]    [{self.finished}/{self.total}] {short_id(event.node.id)}{size}")
        elif event.state == "failed":
            self.console.print(f"[red]failed[/]  {short_id(event.node.id)}: {event.error}")
        elif event.state == "retrying":
            self.console.print(f"[yellow]retry[/]   {short_id(event.node.id)}: {event.error}")
