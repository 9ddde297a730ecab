"""Commands that change what runs: apply (check, plan, freeze, run), fetch (the same, up to the end
of the download) and resume (at boot)."""

from __future__ import annotations

from pathlib import Path

import click

from fioup_flow import rollback
from fioup_flow.agent import Agent
from fioup_flow.cli.output import emit_json
from fioup_flow.cli.progress import human_bytes, progress_option
from fioup_flow.engine import RunResult
from fioup_flow.errors import FioupFlowError, InvalidOngoingUpdateError, InvalidStateError, UsageError
from fioup_flow.graph import Plan
from fioup_flow.lock import LOCK_NAME, InstanceLock
from fioup_flow.offline import OfflineBundle
from fioup_flow.ongoing import download_end
from fioup_flow.planner import fetched_blobs


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


def finish(agent: Agent, result: RunResult) -> None:
    """Deliver what reports can be delivered, then say how the run ended (raising for the exit code)."""
    left = agent.flush_outbox()
    if left:
        click.echo(f"{left} report(s) wait in the outbox for the gateway; they go out with the next command",
                   err=True)
    if result.outcome == "completed":
        if rolled_back := rollback.outcome_error(agent.checkpoint, result.plan_id, failed=False):
            raise rolled_back
        click.echo(f"Update {result.plan_id} completed")
        return
    if result.outcome == "paused":
        click.echo(f"Update {result.plan_id}: everything it needs is downloaded and verified; "
                   "`fioup-flow apply` installs it")
        return
    if result.outcome == "failed":
        if rollback_failed := rollback.outcome_error(agent.checkpoint, result.plan_id, failed=True):
            raise rollback_failed
        if note := rollback.ended_note(agent.checkpoint, result.plan_id):
            click.echo(note, err=True)
        node_id, exc = min(result.failed.items())
        if isinstance(exc, FioupFlowError):
            raise exc
        raise FioupFlowError(f"node {node_id} failed: {exc}") from exc
    if result.outcome == "interrupted":
        click.echo(f"Update {result.plan_id} interrupted; `fioup-flow resume` continues it", err=True)
    else:
        click.echo(f"Update {result.plan_id} cancelled", err=True)
        restore(agent)
    raise SystemExit(result.exit_code)


def run_plan(agent: Agent, plan: Plan | None, fetch_only: bool = False) -> None:
    """Run `plan` (or the plan in progress), to its end or, `fetch_only`, to the end of its download."""
    finish(agent, agent.run(plan, {download_end(plan or agent.checkpoint.current_plan())} if fetch_only else None))


def continue_update(agent: Agent, ongoing: Plan, verb: str, fetch_only: bool = False) -> None:
    """Go on with the update in progress, unless the Targets verified now withdrew or changed its
    Target before it changed what runs: then it is cancelled, the current apps restored, exit 23."""
    agent.follow(ongoing)
    verdict = agent.recheck(ongoing)
    if verdict.note:
        click.echo(verdict.note, err=True)
    if verdict.cancel:
        agent.cancel_stale(ongoing, verdict.cancel)
        restore(agent)
        agent.flush_outbox()
        raise InvalidOngoingUpdateError(
            f"update {ongoing.plan_id} to {ongoing.meta['target']} is cancelled: {verdict.cancel}. "
            "`fioup-flow apply` updates to a Target the factory lists now")
    click.echo(f"{verb} update {ongoing.plan_id} to {ongoing.meta['target']}", err=True)
    run_plan(agent, None, fetch_only)


def describe_plan(agent: Agent, plan: Plan) -> dict:
    """The --dry-run summary: what the plan changes and what it still has to download."""
    blobs = fetched_blobs(plan)
    missing = {digest: size for digest, size in blobs.items() if not agent.store.has(digest, size)}
    return {"plan_id": plan.plan_id, "target": plan.meta["target"], "version": plan.meta["version"],
            "diff": plan.meta["diff"], "nodes": len(plan), "blobs": len(blobs), "blobs_to_download": len(missing),
            "bytes_to_download": sum(size - agent.store.partial_size(d) for d, size in missing.items())}


src_dir_option = click.option(
    "--src-dir", type=click.Path(exists=True, file_okay=False, resolve_path=True, path_type=Path),
    help="Update from this offline bundle (tuf/ and apps/, as `fioctl targets offline-update` writes it) "
         "instead of the gateway and registries.")


@click.command("apply")
@progress_option
@click.argument("version", type=int, required=False)
@click.option("--dry-run", is_flag=True, help="Print the plan and the bytes to download; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the summary as JSON.")
@click.option("--force", is_flag=True, help="Update to Target VERSION even if it failed here before (marked bad).")
@src_dir_option
@click.pass_obj
def apply_command(obj, version: int | None, dry_run: bool, as_json: bool, force: bool, src_dir: Path | None) -> None:
    """Update to Target VERSION (default: the latest that is not marked bad), or go on with the update
    in progress."""
    update(obj, version, dry_run=dry_run, as_json=as_json, force=force, src_dir=src_dir)


@click.command("fetch")
@progress_option
@click.argument("version", type=int, required=False)
@click.option("--force", is_flag=True, help="Fetch Target VERSION even if it failed here before (marked bad).")
@src_dir_option
@click.pass_obj
def fetch_command(obj, version: int | None, force: bool, src_dir: Path | None) -> None:
    """Download and verify all that the update to VERSION (default: the latest that is not marked bad)
    needs, touching no running app; the update stays in progress and a later `apply` (or `resume`)
    installs it."""
    update(obj, version, fetch_only=True, force=force, src_dir=src_dir)


def update(obj, version: int | None, fetch_only: bool = False, dry_run: bool = False, as_json: bool = False,
           force: bool = False, src_dir: Path | None = None) -> None:
    """apply and fetch: go on with the update in progress, or check, plan, freeze and run a new one."""
    config = obj.config
    with InstanceLock(config.flow_dir / LOCK_NAME):
        agent = Agent(config, bundle=OfflineBundle(src_dir) if src_dir else None)
        agent.check_engine()
        ongoing = agent.checkpoint.current_plan()
        if ongoing is not None:
            if version is not None and version != ongoing.meta.get("version"):
                raise InvalidStateError(
                    f"update {ongoing.plan_id} to version {ongoing.meta.get('version')} is in progress; "
                    "resume it (fioup-flow resume) or cancel it (fioup-flow cancel) first")
            continue_update(agent, ongoing, "Continuing", fetch_only)
            return
        if force and version is None:
            raise UsageError("--force needs a VERSION: it tries a Target marked bad again by hand")
        agent.flush_outbox()
        target = agent.choose_target(version, force=force)
        try:
            plan = agent.plan(target, report_failure=not dry_run)
        except FioupFlowError:
            agent.flush_outbox()
            raise
        if plan is None:
            click.echo(f"Already running {target.name} (version {target.version}); nothing to do")
            agent.flush_outbox()
            return
        if dry_run:
            summary = describe_plan(agent, plan)
            if as_json:
                emit_json(summary)
            else:
                click.echo(f"Plan {plan.plan_id}: {summary['nodes']} nodes to {target.name} "
                           f"(version {target.version}); apps {summary['diff']}")
                click.echo(f"To download: {summary['blobs_to_download']} of {summary['blobs']} blobs, "
                           f"{human_bytes(summary['bytes_to_download'])}")
            agent.flush_outbox()
            return
        verb = "Fetching the update" if fetch_only else "Updating"
        click.echo(f"{verb} to {target.name} (version {target.version}): {len(plan)} nodes", err=True)
        run_plan(agent, plan, fetch_only)


@click.command("resume")
@progress_option
@click.pass_obj
def resume_command(obj) -> None:
    """Go on with the update in progress, if any (meant to run at boot). Nothing to do: exit 0.

    When the gateway answers, the Targets are checked again first: an update whose Target was
    withdrawn or changed, and that has not stopped or started an app yet, is cancelled (exit 23).
    """
    config = obj.config
    with InstanceLock(config.flow_dir / LOCK_NAME):
        agent = Agent(config)
        ongoing = agent.checkpoint.current_plan()
        if ongoing is None:
            click.echo("No update in progress")
            try:
                agent.flush_outbox()
            except FioupFlowError as exc:  # not registered yet, say: nothing to deliver anyway
                click.echo(f"reports not delivered: {exc}", err=True)
            return
        agent.check_engine()
        continue_update(agent, ongoing, "Resuming")
