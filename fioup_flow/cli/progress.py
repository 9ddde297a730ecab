"""What a person or a program sees while an update runs: the `--progress` option and its views.

A command that runs plans takes `@progress_option`: every run it causes (the update, a rollback
that follows it, a restore after a cancel, each cycle of a daemon) is observed through the
executor's run observers (`engine.observed_by`), its figures kept by `fioup_flow.progress`, and
drawn by one view, each in a module of its own:

- `auto` (the default): a live view on a terminal (`cli/live.py`); otherwise, as under systemd's
  journal, one line per node event and at most one progress line every few seconds
  (`cli/journal.py`);
- `json`: one JSON object per line on stdout (`cli/jsonlines.py`, the format in the README); what
  the command says besides goes to stderr, so that stdout carries nothing else;
- `off`: nothing but what the command says itself.

Each ends with a summary: how the command ended and its exit code. `status --watch` draws an
update another process runs with the same views (`watch`).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import click

from fioup_flow.checkpoint import NodeRecord, store_path
from fioup_flow.config import Config
from fioup_flow.engine import NodeEvent, RunResult, observed_by
from fioup_flow.errors import exit_code_of
from fioup_flow.graph import Plan
from fioup_flow.lock import LOCK_NAME
from fioup_flow.progress import BlobsOnDisk, Progress, Snapshot
from fioup_flow.rollback import ROLLBACK
from fioup_flow.store import BlobStore
from fioup_flow.watch import Watcher

MODES = ("auto", "json", "off")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{int(s) // 60} min {int(s) % 60:02d} s"


@dataclass(frozen=True)
class Summary:
    """How the command ended: `outcome` (see `command_outcome`), its exit code, and its error's message."""

    outcome: str
    exit_code: int
    error: str | None = None


def command_outcome(runs: list[tuple[str, str]], exit_code: int) -> str:
    """The outcome of a command from the (kind, outcome) of each run it caused: none (nothing to
    run) or error (stopped before any run); rolled-back or rollback-failed when a rollback ran;
    else the first run's: completed, paused (a fetch), failed, interrupted, cancelled (a restore
    may follow it)."""
    if not runs:
        return "none" if exit_code == 0 else "error"
    rollbacks = [outcome for kind, outcome in runs if kind == ROLLBACK]
    if rollbacks:
        return {"completed": "rolled-back", "failed": "rollback-failed"}.get(rollbacks[-1], rollbacks[-1])
    return runs[0][1]


HEADLINES = {
    "completed": "Updated to {what}", "rolled-back": "Rolled back to {what}",
    "rollback-failed": "Rollback to {what} failed at {phase}", "failed": "Update to {what} failed at {phase}",
    "interrupted": "Update to {what} interrupted at {phase}", "cancelled": "Update to {what} cancelled at {phase}",
    "paused": "Fetched the update to {what}",
    "none": "No update ran", "error": "Stopped before an update ran",
}


def summary_line(snap: Snapshot, summary: Summary) -> str:
    """The one line a person reads last."""
    what = f"{snap.target} (version {snap.target_version})"
    line = HEADLINES.get(summary.outcome, summary.outcome).format(what=what, phase=snap.phase)
    if snap.plan_id is not None:
        line += f" in {seconds(snap.elapsed_s)}"
    if snap.blobs_done:
        rate = f" at {human_bytes(snap.mean_rate_bps)}/s" if snap.mean_rate_bps else ""
        line += f": {human_bytes(snap.bytes_done)} in {snap.blobs_done} blobs{rate}"
    return f"{line} (exit {summary.exit_code})"


class View(Protocol):
    """A way of drawing the figures; called under the reporter's lock, one call at a time."""

    tick_s: float  # at most one `tick` per this many seconds

    def begin(self, snap: Snapshot) -> None: ...

    def plan(self, snap: Snapshot, first: bool) -> None: ...

    def node(self, snap: Snapshot, event: NodeEvent) -> None: ...

    def tick(self, snap: Snapshot, event: NodeEvent) -> None: ...

    def ended(self, snap: Snapshot, outcome: str) -> None: ...

    def summary(self, snap: Snapshot, summary: Summary) -> None: ...


class Reporter:
    """The run observer of a command: keeps the figures and has its view draw them."""

    def __init__(self, blobs: Callable[[], BlobsOnDisk], make_view: Callable[[Progress], View]):
        self.progress = Progress(blobs)
        self.view = make_view(self.progress)
        self.runs: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._last_tick = float("-inf")
        self.view.begin(self.progress.snapshot())

    def plan_started(self, plan: Plan, records: dict[str, NodeRecord]) -> None:
        self.progress.start(plan, records)
        with self._lock:
            self.view.plan(self.progress.snapshot(), first=not self.runs)

    def node_event(self, event: NodeEvent) -> None:
        self.progress.on_event(event)
        with self._lock:
            if event.state != "progress":
                self.view.node(self.progress.snapshot(), event)
            elif time.monotonic() - self._last_tick >= self.view.tick_s:
                self._last_tick = time.monotonic()
                self.view.tick(self.progress.snapshot(), event)

    def plan_ended(self, plan: Plan, result: RunResult) -> None:
        self.progress.ended(result.outcome)
        with self._lock:
            self.runs.append((plan.meta.get("kind", "update"), result.outcome))
            self.view.ended(self.progress.snapshot(), result.outcome)

    def finish(self, exit_code: int, error: str | None) -> None:
        summary = Summary(command_outcome(self.runs, exit_code), exit_code, error)
        with self._lock:
            self.view.summary(self.progress.snapshot(), summary)


def view_maker(mode: str, out: TextIO) -> Callable[[Progress], View]:
    """The view `mode` asks for, its module imported alone: rich only for a terminal's live view, so
    that a `resume` at boot, writing to the journal, does not pay for it."""
    if mode == "json":
        from fioup_flow.cli.jsonlines import JsonLines

        return lambda progress: JsonLines(out)
    if sys.stderr.isatty():
        from fioup_flow.cli.live import LiveView

        return lambda progress: LiveView(progress.snapshot)
    from fioup_flow.cli.journal import JournalView

    return lambda progress: JournalView()


def exit_status(exc: BaseException) -> tuple[int, str | None]:
    """The exit code the process ends with for `exc` (as `cli.FioupFlowGroup` and click decide), and
    the message of an error."""
    if isinstance(exc, SystemExit):
        return (exc.code if isinstance(exc.code, int) else int(exc.code is not None)), None
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code, None
    if isinstance(exc, click.ClickException):
        return exc.exit_code, exc.format_message()
    return exit_code_of(exc), str(exc) or exc.__class__.__name__


@contextlib.contextmanager
def showing(mode: str, blobs: Callable[[], BlobsOnDisk]) -> Iterator[Reporter | None]:
    """Show every run of the block as `mode` says, then its summary (None: `off`, nothing shown)."""
    if mode == "off":
        yield None
        return
    reporter = Reporter(blobs, view_maker(mode, sys.stdout))
    quiet = contextlib.redirect_stdout(sys.stderr) if mode == "json" else contextlib.nullcontext()
    code, error = 0, None
    with observed_by(reporter), quiet:
        try:
            yield reporter
        except BaseException as exc:
            code, error = exit_status(exc)
            raise
        finally:
            reporter.finish(code, error)


def progress_option(command: Callable[..., Any] | None = None, *, default: str = "auto") -> Any:
    """`--progress auto|json|off` for a command that runs plans, wired by one decorator line:
    `@progress_option`, or `@progress_option(default="off")` for a command that logs its runs itself."""
    if command is None:
        return functools.partial(progress_option, default=default)

    @click.option("--progress", "progress_mode", type=click.Choice(MODES), default=default, show_default=True,
                  help="auto: a live view on a terminal, else one line per node and a progress line every "
                       "few seconds (stderr); json: one JSON object per line on stdout; off: neither.")
    @functools.wraps(command)
    def shown_command(*args: Any, progress_mode: str, **kwargs: Any) -> Any:
        obj = click.get_current_context().obj  # its config is loaded when a plan runs, not before
        with showing(progress_mode, lambda: BlobStore(obj.config.reset_apps_root)):
            return command(*args, **kwargs)

    return shown_command


def watch(config: Config, as_json: bool) -> None:
    """Follow the update another process runs until it ends, drawn as `--progress` draws a run."""
    blobs = BlobStore(config.reset_apps_root)
    with showing("json" if as_json else "auto", lambda: blobs) as reporter:
        Watcher(store_path(config.flow_dir), config.flow_dir / LOCK_NAME, blobs).follow(reporter)
        if not reporter.runs and not as_json:
            click.echo("No update in progress")
