"""Commands that show and steer the update: graph, status, cancel.

They read the checkpoint store under `config.flow_dir`; none of them runs a node. `graph` with
no update in progress shows the plan `apply` would run (which needs the gateway and registry).
`cancel` takes the instance lock to tell whether a runner is active: if one is, it only raises
the cancel flag, which the runner sees within a fraction of a second (it stops as on a signal).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import click
from rich.console import Console

from fioup_flow.agent import Agent
from fioup_flow.badtargets import BadTargets
from fioup_flow.checkpoint import STATES, CheckpointStore, store_path
from fioup_flow.cli import progress
from fioup_flow.cli.output import emit_json
from fioup_flow.errors import FioupFlowError, LockedError, NotConfiguredError
from fioup_flow.graph import Plan
from fioup_flow.installed import current_target
from fioup_flow.lock import LOCK_NAME, InstanceLock
from fioup_flow.ongoing import installing, to_another_target
from fioup_flow.outbox import Outbox, outbox_path
from fioup_flow.render import (
    FORMATS,
    render_dot,
    render_json,
    render_mermaid,
    render_table,
    rows,
)
from tasks import appstate
from tasks.apps_states import apps_status


def _open_store(ctx: click.Context) -> CheckpointStore | None:
    """The checkpoint store, or None if fioup-flow never ran here (nothing to show, nothing created)."""
    path = store_path(ctx.obj.config.flow_dir)
    return CheckpointStore(path) if path.exists() else None


def _in_progress(store: CheckpointStore | None) -> tuple[Plan | None, dict]:
    plan = store.current_plan() if store else None
    return plan, (store.records(plan.plan_id, plan.graph.nodes) if plan else {})


@click.command()
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.pass_context
def graph(ctx: click.Context, fmt: str) -> None:
    """Show the plan of the update in progress and where each node stands."""
    plan, records = _in_progress(_open_store(ctx))
    if plan is None:
        plan = _preview(ctx.obj.config)
        if plan is None:
            if fmt == "json":
                emit_json({"plan_id": None, "meta": {}, "nodes": [], "edges": []})
            else:
                click.echo("No update in progress")
            return
        if fmt == "text":
            click.echo("No update in progress; this is the plan `fioup-flow apply` would run now:")
    if fmt == "text":
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)  # a pipe or a log file: no folding at 80 columns
        console.print(render_table(plan, records))
    else:
        render = {"json": render_json, "dot": render_dot, "mermaid": render_mermaid}[fmt]
        click.echo(render(plan, records), nl=False)


def _device(config) -> dict[str, Any]:
    """What runs: the current Target and each of its apps as the engine sees them. An engine that does
    not answer is an error (exit 7): "unknown" for every app would read like apps that are gone."""
    current = current_target(config.flow_dir)
    try:
        apps = apps_status(appstate.client(), current)
    except appstate.UNANSWERED as exc:
        raise appstate.unavailable(exc) from exc
    return {"current": {"target": current.name, "version": current.version} if current else None, "apps": apps}


def _preview(config) -> Plan | None:
    """The plan `apply` would run (to the latest Target); None when there is nothing to do or no factory."""
    try:
        config.server  # noqa: B018 - raises if the device is not registered
    except NotConfiguredError:
        return None
    with InstanceLock(config.flow_dir / LOCK_NAME):
        agent = Agent(config)
        try:
            return agent.plan(agent.choose_target(None))
        finally:
            agent.flush_outbox()


def restore(agent: Agent) -> None:
    """Start again what the cancelled update had stopped; say so, or say how to do it by hand."""
    try:
        result = agent.restore()
    except FioupFlowError as exc:
        raise FioupFlowError(f"the update is cancelled, but the current apps could not be restored: {exc}; "
                             "`fioup-flow apply <current version>` restores them") from exc
    if result is not None:
        click.echo(f"Restored the apps of the current Target ({result.outcome})")
        agent.flush_outbox()


def _install_due(config, plan: Plan, records: dict) -> str | None:
    """When the daemon installs the update in progress: when `pacman.install_window` next opens, for
    an update to another Target whose install has not begun (None otherwise: it goes on at once)."""
    window = config.install_window
    if window is None or not to_another_target(plan) or installing(plan, records):
        return None
    return window.next_opening(datetime.now().astimezone()).isoformat(timespec="minutes")


def _status(config, store: CheckpointStore | None, history: int) -> dict[str, Any]:
    plan, records = _in_progress(store)
    current = None
    if plan is not None:
        table = rows(plan, records)
        current = {
            "plan_id": plan.plan_id, "target": plan.meta.get("target"), "version": plan.meta.get("version"),
            "kind": plan.meta.get("kind", "update"), "reason": plan.meta.get("reason"),
            "started": store.frozen_at(plan.plan_id), "cancel_requested": store.cancel_requested(plan.plan_id),
            "counts": {state: sum(1 for r in table if r["state"] == state) for state in STATES},
            "failed": [{"id": r["id"], "error": r["error"], "exit_code": records[r["id"]].exit_code}
                       for r in table if r["state"] == "failed"],
            "install_due": _install_due(config, plan, records),
        }
    return {"in_progress": current, "history": store.history(history) if store else [],
            "bad_targets": [bad.as_json() for bad in BadTargets(store).all()] if store else []}


def _reports(flow_dir) -> dict[str, Any]:
    """What waits in the outbox, and what the gateway refused for good (set aside, newest last)."""
    path = outbox_path(flow_dir)
    if not path.exists():
        return {"pending": 0, "set_aside": []}
    outbox = Outbox(path)
    try:
        return {"pending": len(outbox.pending()),
                "set_aside": [{k: entry[k] for k in ("id", "endpoint", "status", "reason", "at")}
                              for entry in outbox.rejected()]}
    finally:
        outbox.close()


def _print_reports(reports: dict[str, Any]) -> None:
    if reports["pending"]:
        click.echo(f"Reports waiting for the gateway: {reports['pending']}")
    if reports["set_aside"]:
        click.secho(f"Reports the gateway refused (set aside, the last {len(reports['set_aside'])}):", fg="yellow")
        for entry in reports["set_aside"]:
            click.echo(f"  {_when(entry['at'])}  {entry['endpoint']} {entry['id']}: {entry['reason']}")


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "?"


def _print_device(data: dict[str, Any]) -> None:
    current = data["current"]
    click.echo(f"Current: {current['target']} (version {current['version']})" if current else "Current: none")
    colours = {"running": "green", "stopped": "red", "missing": "red"}
    for app in data["apps"]:
        services = ", ".join(f"{s['name']} {s['state']}" + (f" ({s['health']})" if s["health"] else "")
                             for s in app["services"]) or "no containers"
        click.echo(f"  {app['name']:<16} " + click.style(f"{app['state']:<8}", fg=colours[app["state"]])
                   + f" {services}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one line of JSON (with --watch: JSON lines).")
@click.option("--history", "history", default=5, show_default=True, help="How many past updates to list.")
@click.option("--watch", is_flag=True, help="Follow the update another process runs until it ends (read-only).")
@click.pass_context
def status(ctx: click.Context, as_json: bool, history: int, watch: bool) -> None:
    """Show the update in progress (node counts, failures) and the last updates."""
    if watch:
        progress.watch(ctx.obj.config, as_json)
        return
    try:
        data = dict(_device(ctx.obj.config), **_status(ctx.obj.config, _open_store(ctx), history),
                    reports=_reports(ctx.obj.config.flow_dir))
    except FioupFlowError as exc:
        if as_json:  # a script reads stdout: the error goes there too, and the exit code says which
            emit_json({"error": str(exc), "exit_code": exc.exit_code})
        raise
    if as_json:
        emit_json(data)
        return
    _print_device(data)
    current = data["in_progress"]
    if current is None:
        click.echo("No update in progress")
    else:
        what = "Rollback" if current["kind"] == "rollback" else "Update"
        click.echo(f"{what} in progress: {current['plan_id']} (target {current['target']}, "
                   f"version {current['version']}, started {_when(current['started'])})")
        if current["reason"]:
            click.echo(f"  because: {current['reason']}")
        click.echo("  " + ", ".join(f"{state} {n}" for state, n in current["counts"].items() if n))
        if current["install_due"]:
            click.echo(f"  install due {current['install_due'].replace('T', ' ')} "
                       f"(pacman.install_window {ctx.obj.config.install_window.text}); the daemon installs it then")
        if current["cancel_requested"]:
            click.echo("  cancel requested: the runner stops its running nodes at their next stop point")
        for failed in current["failed"]:
            click.secho(f"  failed {failed['id']}: {failed['error']}", fg="red")
    if data["history"]:
        click.echo("Recent updates:")
        for entry in data["history"]:
            counts = ", ".join(f"{s} {n}" for s, n in entry["counts"].items() if n)
            kind = " (rollback)" if entry.get("kind") == "rollback" else ""
            click.echo(f"  {_when(entry['ended'])}  {entry['plan_id']}  {entry['target']}{kind}  {entry['outcome']}  ({counts})")
            if entry.get("reason"):
                click.echo(f"    {entry['reason']}")
    if data["bad_targets"]:
        click.secho("Bad Targets (not tried again; `fioup-flow apply VERSION --force` tries one):", fg="yellow")
        for bad in data["bad_targets"]:
            click.echo(f"  {_when(bad['when'])}  {bad['name']} (version {bad['version']}): {bad['reason']}")
    _print_reports(data["reports"])


@click.command()
@click.option("--discard-state", is_flag=True,
              help="Move the checkpoint store aside (e.g. when it is corrupt) and forget the update in progress.")
@click.pass_context
def cancel(ctx: click.Context, discard_state: bool) -> None:
    """Abandon the update in progress, dropping its partial downloads."""
    flow_dir = ctx.obj.config.flow_dir
    if discard_state:
        with InstanceLock(flow_dir / LOCK_NAME):
            aside = CheckpointStore.discard(store_path(flow_dir))
        click.echo(f"Moved the checkpoint store aside to {aside}" if aside else "No checkpoint store to discard")
        return
    store = _open_store(ctx)
    plan = store.current_plan() if store else None
    if plan is None:
        click.echo("No update in progress to cancel")
        return
    try:
        with InstanceLock(flow_dir / LOCK_NAME):
            store.finish(plan, "cancelled")
            click.echo(f"Cancelled update {plan.plan_id}")
            restore(Agent(ctx.obj.config))
    except LockedError:
        store.request_cancel(plan.plan_id)
        click.echo(f"Cancel requested: the runner stops update {plan.plan_id} at its next stop point")


COMMANDS: list[click.Command] = [graph, status, cancel]
