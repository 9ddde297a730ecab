"""`fioup-flow status`: what runs, the update in progress, the last updates, the reports waiting.

It reads the engine, the checkpoint store and the outbox and changes nothing. It is kept apart
from the commands that update (`fioup_flow.cli.apply`) so that it imports neither TUF nor the
agent's wiring nor rich: a script or a health probe that polls it pays for little more than the
Docker client and the store.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import click

from fioup_flow.badtargets import BadTargets
from fioup_flow.checkpoint import STATES, CheckpointStore, NodeRecord, store_path
from fioup_flow.cli.output import emit_json
from fioup_flow.config import Config
from fioup_flow.errors import FioupFlowError
from fioup_flow.graph import Plan
from fioup_flow.installed import current_target
from fioup_flow.outbox import Outbox, outbox_path
from tasks import appstate
from tasks.apps_states import apps_status


def open_store(config: Config) -> CheckpointStore | None:
    """The checkpoint store, or None if fioup-flow never ran here (nothing to show, nothing created)."""
    path = store_path(config.flow_dir)
    return CheckpointStore(path) if path.exists() else None


def _device(config: Config) -> dict[str, Any]:
    """What runs: the current Target and each of its apps as the engine sees them. An engine that does
    not answer is an error (exit 7): "unknown" for every app would read like apps that are gone."""
    current = current_target(config.flow_dir)
    try:
        apps = apps_status(appstate.client(), current)
    except appstate.UNANSWERED as exc:
        raise appstate.unavailable(exc) from exc
    return {"current": {"target": current.name, "version": current.version} if current else None, "apps": apps}


def _install_due(config: Config, frozen: dict[str, Any], records: dict[str, NodeRecord]) -> str | None:
    """When the daemon installs the update in progress: when `pacman.install_window` next opens, for
    an update to another Target whose install has not begun (None otherwise: it goes on at once)."""
    window = config.install_window
    if window is None:
        return None
    from fioup_flow.ongoing import installing, to_another_target  # the task kinds it knows, only here

    plan = Plan.from_data(frozen)  # the graph, only here: which nodes come after the download
    if not to_another_target(plan) or installing(plan, records):
        return None
    return window.next_opening(datetime.now().astimezone()).isoformat(timespec="minutes")


def _in_progress(config: Config, store: CheckpointStore) -> dict[str, Any] | None:
    """The update in progress, read from its frozen form and its nodes' records (no graph built:
    networkx costs a status a seventh of a second); failed nodes in the order of their ids."""
    frozen = store.current_frozen()
    if frozen is None:
        return None
    plan_id, meta, node_ids = frozen["plan_id"], frozen["meta"], [node["id"] for node in frozen["nodes"]]
    records = store.records(plan_id, node_ids)
    return {
        "plan_id": plan_id, "target": meta.get("target"), "version": meta.get("version"),
        "kind": meta.get("kind", "update"), "reason": meta.get("reason"),
        "started": store.frozen_at(plan_id), "cancel_requested": store.cancel_requested(plan_id),
        "counts": {state: sum(1 for r in records.values() if r.state == state) for state in STATES},
        "failed": [{"id": node_id, "error": r.error, "exit_code": r.exit_code}
                   for node_id, r in records.items() if r.state == "failed"],
        "install_due": _install_due(config, frozen, records),
    }


def _status(config: Config, store: CheckpointStore | None, history: int) -> dict[str, Any]:
    if store is None:
        return {"in_progress": None, "history": [], "bad_targets": []}
    return {"in_progress": _in_progress(config, store), "history": store.history(history),
            "bad_targets": [bad.as_json() for bad in BadTargets(store).all()]}


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
        from fioup_flow.cli.progress import watch as follow  # the live view's libraries, only for --watch

        follow(ctx.obj.config, as_json)
        return
    try:
        data = dict(_device(ctx.obj.config), **_status(ctx.obj.config, open_store(ctx.obj.config), history),
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


