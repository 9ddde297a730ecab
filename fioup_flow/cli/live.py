"""The view for a person at a terminal: a live panel, redrawn four times a second, then one line.

The panel shows the phases (those done, the current one, those to come), the bytes and blobs
fetched of the total with the rate and the time left, and each app's step. Failures and retries
(the executor logs them) are printed above it as they happen. When a run ends its panel stays as it last was, so that
what the command says next (how the run ended, a rollback starting) comes below it, not through
it; a run that follows (a rollback) gets a panel of its own; the summary line comes last.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fioup_flow.cli.progress import Summary, human_bytes, seconds, summary_line
from fioup_flow.engine import NodeEvent
from fioup_flow.progress import PHASES, Snapshot

STEP_STYLES = {"done": "green", "removed": "green", "unchanged": "bright_black", "waiting": "bright_black",
               "failed": "bold red"}
BAR_WIDTH = 40


def phases(current: str) -> Text:
    """plan › fetch › install ›...: those done green, the current one bold, those to come dim."""
    text = Text()
    at = PHASES.index(current)
    for i, phase in enumerate(PHASES[:-1]):
        style = "green" if i < at else "bold yellow" if i == at else "bright_black"
        text.append(("  ›  " if i else "") + phase, style=style)
    return text


def download(snap: Snapshot) -> Table:
    """The bar, then `12.3 MB of 48.3 MB · 5/14 blobs · 4.0 MB/s · 9.0 s left`."""
    figures = [f"{human_bytes(snap.bytes_done)} of {human_bytes(snap.bytes_total)}",
               f"{snap.blobs_done}/{snap.blobs_total} blobs"] if snap.blobs_total else ["nothing to fetch"]
    if snap.phase == "fetch" and snap.rate_bps is not None:
        figures.append(f"{human_bytes(snap.rate_bps)}/s")
    if snap.phase == "fetch" and snap.eta_s is not None:
        figures.append(f"{seconds(snap.eta_s)} left")
    row = Table.grid(padding=(0, 2))
    row.add_row(ProgressBar(total=snap.bytes_total or 1, completed=snap.bytes_done if snap.bytes_total else 1,
                            width=BAR_WIDTH, complete_style="yellow", finished_style="green"), " · ".join(figures))
    return row


def apps(snap: Snapshot) -> Table:
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False, padding=(0, 2))
    table.add_column("app")
    table.add_column("step")
    for name, step in snap.apps.items():
        table.add_row(name, Text(step, style=STEP_STYLES.get(step, "yellow")))
    return table


def panel(snap: Snapshot) -> Group:
    if snap.plan_id is None:
        return Group(Text("Checking for an update…", style="bright_black"))
    what = "Rolling back" if snap.kind == "rollback" else "Updating"
    head = Text.assemble((f"{what} to {snap.target} (version {snap.target_version})", "bold"),
                         f"   nodes {snap.nodes_done}/{snap.nodes_total}   {seconds(snap.elapsed_s)}")
    return Group(head, phases(snap.phase), download(snap), apps(snap))


def swap_log_stream(old: TextIO, new: TextIO) -> None:
    """Point the log handlers that write to `old` at `new`: a log line (the executor logs a failed
    node) written past the panel's stand-in for stderr would leave the panel drawn twice."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is old:
            handler.setStream(new)


class LiveView:
    tick_s = math.inf  # the panel redraws itself from the latest figures

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.console = Console(stderr=True, highlight=False)
        self.snapshot = snapshot
        self.live: Live | None = None
        self.streams: tuple[TextIO, TextIO] = (sys.stderr, sys.stderr)

    def begin(self, snap: Snapshot) -> None:
        """The panel starts with the first plan: until then the command's own lines say what it does."""

    def plan(self, snap: Snapshot, first: bool) -> None:
        if not first:
            what = "Rolling back" if snap.kind == "rollback" else "Running"
            self.console.print(f"[yellow]{what}[/] to {snap.target} (version {snap.target_version})")
        self.live = Live(console=self.console, get_renderable=lambda: panel(self.snapshot()), refresh_per_second=4)
        real = sys.stderr
        self.live.start()
        self.streams = (real, sys.stderr)  # Live's stand-in prints above the panel
        swap_log_stream(*self.streams)

    def node(self, snap: Snapshot, event: NodeEvent) -> None:
        """The panel shows it; a failure or a retry the executor logs, printed above the panel."""

    def tick(self, snap: Snapshot, event: NodeEvent) -> None:
        """Never called (tick_s is infinite)."""

    def ended(self, snap: Snapshot, outcome: str) -> None:
        if self.live is not None:
            swap_log_stream(*reversed(self.streams))
            self.live.stop()  # drawn one last time, and left on the screen
            self.live = None

    def summary(self, snap: Snapshot, summary: Summary) -> None:
        self.ended(snap, summary.outcome)  # a command stopped inside a run (a second signal, an error)
        if summary.outcome != "none":
            style = "green" if summary.exit_code == 0 else "red"
            self.console.print(Text(summary_line(snap, summary), style=style))
