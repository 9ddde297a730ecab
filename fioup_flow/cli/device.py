"""Commands that talk to the factory about this device: register, check, whoami."""

from __future__ import annotations

import os
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from fioup_flow.agent import Agent
from fioup_flow.cli.output import emit_json
from fioup_flow.config import split_list
from fioup_flow.errors import MetadataUpdateError, NoMatchingTargetError
from fioup_flow.gateway import GatewayClient, GatewayError
from fioup_flow.installed import current_target
from fioup_flow.register import (
    DEFAULT_DEVICE_API,
    Registration,
    check_factory,
    check_uuid,
    default_hardware_id,
    register,
)
from fioup_flow.targets import Target, select_target


@click.command("register")
@click.option("--factory", required=True, help="The factory to register with (its name; `lmp` is refused).")
@click.option("--server", envvar="DEVICE_API", default=DEFAULT_DEVICE_API, show_default=True, metavar="URL",
              help="The registration endpoint ($DEVICE_API), or a registration service's https://host[:port].")
@click.option("--token", "--api-token", "token", required=True, envvar="FIOUP_FLOW_REGISTRATION_TOKEN",
              help="The factory's registration (API) token (or $FIOUP_FLOW_REGISTRATION_TOKEN).")
@click.option("--api-token-header", default="OSF-TOKEN", show_default=True, hidden=True,
              help="The HTTP header the token goes in.")
@click.option("--name", default=None, help="The device's name in the factory (default: its UUID).")
@click.option("--uuid", "device_uuid", default=None, help="The device's UUID (default: a new one).")
@click.option("--production", is_flag=True,
              help="Register a production device (also when $PRODUCTION is set): its certificate says so.")
@click.option("--device-group", default=None, help="Put the device in this device group.")
@click.option("--hwid", "--hw-id", "hwid", default=default_hardware_id, show_default="amd64-linux or arm64-linux",
              help="Hardware ID that Targets are filtered by.")
@click.option("--tag", "tags", multiple=True, default=("main",), show_default=True,
              help="Tag that Targets are filtered by (repeatable).")
@click.option("--apps", default=None, metavar="A,B", help="Only run these apps (default: all of the Target's).")
@click.option("--sota-dir", type=click.Path(path_type=Path), default=Path("/var/sota"), show_default=True,
              help="Where the device's config, keys and state go.")
@click.option("--ca", "ca_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CA certificate to trust for the registration service (default: the system's store).")
@click.option("--force", is_flag=True, help="Register again, replacing an existing registration.")
def register_command(factory: str, server: str, token: str, api_token_header: str, name: str | None,
                     device_uuid: str | None, production: bool, device_group: str | None, hwid: str,
                     tags: tuple[str, ...], apps: str | None, sota_dir: Path, ca_file: Path | None,
                     force: bool) -> None:
    """Register this device with its factory and check the link to its Device Gateway."""
    reg = Registration(
        server=server, token=token, factory=check_factory(factory), hardware_id=hwid,
        sota_dir=sota_dir.absolute(), name=name, tags=tags, apps=split_list(apps) if apps is not None else None,
        device_group=device_group, production=production or bool(os.environ.get("PRODUCTION")),
        ca_file=ca_file, token_header=api_token_header, device_uuid=check_uuid(device_uuid),
    )
    config = register(reg, force=force)
    click.echo(f"Device {reg.device_name} ({reg.device_uuid}) is now registered at factory {reg.factory}; "
               f"config in {reg.sota_dir / 'sota.toml'}")
    click.echo(f"Device Gateway {config.server} answers over mutual TLS.")


def check_report(targets: list[Target], current: Target | None, latest: Target, trust: str) -> dict:
    update_available = current is None or (current.name, current.apps) != (latest.name, latest.apps)
    return {
        "trust": trust,
        "targets": [t.as_json() for t in targets],
        "current": current.as_json() if current else None,
        "latest": latest.as_json(),
        "update_available": update_available,
    }


def print_check(report: dict) -> None:
    console = Console()
    table = Table("version", "target", "apps", box=None, header_style="bold")
    current_name = (report["current"] or {}).get("name")
    for t in report["targets"]:
        marks = " (current)" if t["name"] == current_name else ""
        marks += " (latest)" if t["name"] == report["latest"]["name"] else ""
        table.add_row(str(t["version"]), t["name"] + marks, ", ".join(a["name"] for a in t["apps"]) or "-")
    console.print(table)
    current = report["current"]
    console.print(f"Current: {current['name'] + ' (version ' + str(current['version']) + ')' if current else 'none'}")
    console.print(f"Latest:  {report['latest']['name']} (version {report['latest']['version']})")
    console.print("[yellow]Update available[/]" if report["update_available"] else "[green]Up to date[/]")
    console.print(f"Trust:   {report['trust']}")


@click.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def check_command(obj, as_json: bool) -> None:
    """Refresh the metadata (TUF, or TLS alone in plain mode) and list the Targets for this device."""
    config = obj.config
    agent = Agent(config)
    current = current_target(config.flow_dir)
    try:
        targets = agent.refresh_targets()
    finally:
        agent.flush_outbox()
    if not targets:
        raise NoMatchingTargetError(f"no Target lists hardware ID {config.hardware_id!r} for tags {','.join(config.tags)}")
    report = check_report(targets, current, select_target(targets).narrowed(config.compose_apps), agent.tuf().trust)
    if as_json:
        emit_json(report)
    else:
        print_check(report)


@click.command("whoami")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def whoami_command(obj, as_json: bool) -> None:
    """Show what the factory knows about this device."""
    try:
        device = GatewayClient(obj.config).get_json("device")
    except GatewayError as exc:
        raise MetadataUpdateError(str(exc)) from exc
    if as_json:
        emit_json(device)
    else:
        for key in ("name", "uuid", "factory", "tag", "created_at", "last_seen"):
            click.echo(f"{key + ':':12} {device.get(key, '')}")
