"""The view for a log, such as systemd's journal: lines, never a line per tick.

One line per node that finished, failed or is retried, as fioup-flow always printed them (the
power-cut harness reads `done [N/M] <node>`), and at most one progress line every `PERIOD_S`
while bytes move: a download of a thousand chunks must not become a thousand lines in the journal.
"""

from __future__ import annotations

import click

from fioup_flow.cli.progress import Summary, human_bytes, seconds, summary_line
from fioup_flow.engine import NodeEvent
from fioup_flow.progress import Snapshot
from fioup_flow.task import short_id

PERIOD_S = 5.0


def progress_line(snap: Snapshot) -> str:
    """`progress fetch: 12.3 MB of 48.3 MB (5/14 blobs), 4.0 MB/s, 9.0 s left; apps pair waiting, ...`"""
    rate = f", {human_bytes(snap.rate_bps)}/s" if snap.rate_bps is not None else ""
    left = f", {seconds(snap.eta_s)} left" if snap.eta_s is not None else ""
    apps = ", ".join(f"{name} {step}" for name, step in snap.apps.items())
    return (f"progress {snap.phase}: {human_bytes(snap.bytes_done)} of {human_bytes(snap.bytes_total)} "
            f"({snap.blobs_done}/{snap.blobs_total} blobs){rate}{left}; apps {apps}")


class JournalView:
    tick_s = PERIOD_S

    @staticmethod
    def say(line: str) -> None:
        """One line to stderr (the journal); click drops the colours where stderr is no terminal."""
        click.echo(line, err=True)

    def begin(self, snap: Snapshot) -> None:
        """The command says what it starts itself."""

    def plan(self, snap: Snapshot, first: bool) -> None:
        """Another plan runs after the first (a rollback, a restore): say which."""
        if not first:
            what = "Rolling back" if snap.kind == "rollback" else "Running"
            self.say(f"{click.style(what, fg='yellow')} to {snap.target} (version {snap.target_version}): "
                     f"{snap.nodes_total} nodes")

    def node(self, snap: Snapshot, event: NodeEvent) -> None:
        node_id = short_id(event.node.id)
        if event.state == "done" and not event.already:
            size = f" ({human_bytes(event.done_bytes)})" if event.node.kind == "fetch" else ""
            self.say(f"{click.style('done', fg='green')}    [{snap.nodes_done}/{snap.nodes_total}] {node_id}{size}")
        elif event.state == "failed":
            self.say(f"{click.style('failed', fg='red')}  {node_id}: {event.error}")
        elif event.state == "retrying":
            self.say(f"{click.style('retry', fg='yellow')}   {node_id}: {event.error}")

    def tick(self, snap: Snapshot, event: NodeEvent) -> None:
        self.say(progress_line(snap))

    def ended(self, snap: Snapshot, outcome: str) -> None:
        """The command says how a run ended; the summary says how it all did."""

    def summary(self, snap: Snapshot, summary: Summary) -> None:
        if summary.outcome != "none":  # the command said there was nothing to do
            self.say(summary_line(snap, summary))
