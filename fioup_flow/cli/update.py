"""Commands that show and steer the update: graph and cancel (status is `fioup_flow.cli.status`).

They read the checkpoint store under `config.flow_dir`; none of them runs a node. `graph` with
no update in progress shows the plan `apply` would run (which needs the gateway and registry).
`cancel` takes the instance lock to tell whether a runner is active: if one is, it only raises
the cancel flag, which the runner sees within a fraction of a second (it stops as on a signal).
"""

from __future__ import annotations

import click
from rich.console import Console

from fioup_flow.agent import Agent
from fioup_flow.checkpoint import CheckpointStore, NodeRecord, store_path
from fioup_flow.cli.apply import restore
from fioup_flow.cli.output import emit_json
from fioup_flow.cli.status import open_store
from fioup_flow.errors import LockedError, NotConfiguredError
from fioup_flow.graph import Plan
from fioup_flow.lock import LOCK_NAME, InstanceLock
from fioup_flow.render import FORMATS, render_dot, render_json, render_mermaid, render_table


def _in_progress(store: CheckpointStore | None) -> tuple[Plan | None, dict[str, NodeRecord]]:
    """The update in progress and its nodes' records, or (None, {})."""
    plan = store.current_plan() if store else None
    return plan, (store.records(plan.plan_id, plan.graph.nodes) if plan else {})


@click.command()
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.pass_context
def graph(ctx: click.Context, fmt: str) -> None:
    """Show the plan of the update in progress and where each node stands."""
    plan, records = _in_progress(open_store(ctx.obj.config))
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
    store = open_store(ctx.obj.config)
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
