"""The `fioup-flow-factory` command: bring a local factory up and down, inspect it, sign its repo.

`up` creates what a factory needs once (factory.json with its name, ports and secrets, the PKI,
the TUF repository), then starts factory-server (gateway, api, blob storage) and the two
docker-registry instances (the hub and a third party's stand-in) in the background and returns
once every listener answers. Ports are chosen on the first `up` and kept, so the devices
registered against a factory keep reaching it after `down` and `up`; a factory made before a
listener existed gets a port for it at its next `up`.
"""

from __future__ import annotations

import json
import secrets
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from fioup_flow.errors import FioupFlowError, NotConfiguredError, UsageError
from fioup_flow.factory.broken import publish_broken_command
from fioup_flow.factory.devices import LOGS, DeviceRecords
from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.offline import offline_bundle_command
from fioup_flow.factory.pki import ensure_pki
from fioup_flow.factory.process import (
    process_running,
    service_pid,
    start_process,
    stop_process,
    wait_for_url,
)
from fioup_flow.factory.publish import publish_command
from fioup_flow.factory.registry import SITES, THIRDPARTY, registry_argv, write_registry_config
from fioup_flow.factory.tufrepo import TufRepository

DEFAULT_FACTORY = "factory"
SERVER = "factory-server"
REGISTRY = "registry"
SERVICES = (SERVER, REGISTRY, THIRDPARTY)
PORTS = ("gateway", "api", "registry", THIRDPARTY, "storage")
START_TIMEOUT = 30.0


class FactoryGroup(click.Group):
    """Turns fioup-flow's errors into `error: <message>` and their exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FioupFlowError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)


home_option = click.option("--home", "home_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
                           help="The factory's folder (all its state).")


@click.group(cls=FactoryGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """A local FoundriesFactory stand-in: gateway, TUF repositories and registry on loopback."""


def _home(home_dir: Path) -> FactoryHome:
    return FactoryHome(home_dir.resolve())


def _configured(home_dir: Path) -> FactoryHome:
    home = _home(home_dir)
    if not home.state_file.exists():
        raise NotConfiguredError(f"no factory in {home.root}: run `fioup-flow-factory up --home {home.root}` first")
    return home


def _free_ports(count: int) -> list[int]:
    """Distinct loopback ports free right now (held open together so none is picked twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def ensure_state(home: FactoryHome, factory: str | None, hub_blob_redirect: bool = False) -> dict:
    """factory.json, created on the first `up` (name, ports, registration token, publisher);
    a port is added for any listener the factory did not have yet."""
    if home.state_file.exists():
        state = home.load_state()
        if factory is not None and factory != state["factory"]:
            raise UsageError(f"{home.root} is the factory {state['factory']!r}, not {factory!r}")
        missing = [name for name in PORTS if name not in state["ports"]]
        if missing:
            state["ports"] |= dict(zip(missing, _free_ports(len(missing))))
            home.save_state(state)
        return state
    state = {
        "factory": factory or DEFAULT_FACTORY,
        "registration_token": secrets.token_urlsafe(24),
        "ports": dict(zip(PORTS, _free_ports(len(PORTS)))),
        "publisher": {"username": "publisher", "secret": secrets.token_urlsafe(24)},
        "hub_blob_redirect": hub_blob_redirect,
    }
    state["registry_host"] = f"127.0.0.1:{state['ports']['registry']}"
    home.root.mkdir(parents=True, exist_ok=True)
    home.save_state(state)
    return state


def up_info(home: FactoryHome) -> dict:
    """The JSON `up` prints: where the factory answers, how devices register, what they trust."""
    state = home.load_state()
    ports = state["ports"]
    return {"home": str(home.root), "factory": state["factory"],
            "gateway": f"https://127.0.0.1:{ports['gateway']}", "api": f"https://127.0.0.1:{ports['api']}",
            "registry": state["registry_host"], "thirdparty": f"127.0.0.1:{ports[THIRDPARTY]}",
            "storage": f"https://127.0.0.1:{ports['storage']}", "registration_token": state["registration_token"],
            "ca": str(home.ca_cert), "public_ca": str(home.public_ca_cert),
            "ca_bundle": str(home.public_ca_bundle)}


def bring_up(home: FactoryHome, factory: str | None = None, hub_blob_redirect: bool = False) -> dict:
    """Create what is missing, start what is not running, wait for every listener; the up JSON."""
    ensure_state(home, factory, hub_blob_redirect)
    ensure_pki(home)
    TufRepository(home).init()
    for site in (make(home) for make in SITES):
        write_registry_config(home, site)
        start_process(home, site.name, registry_argv(site))
    start_process(home, SERVER, [sys.executable, "-m", "fioup_flow.factory.server", "--home", str(home.root)])
    info = up_info(home)
    # The listeners of factory-server are bound before it serves any: api answering is enough.
    wait_for_url(f"{info['api']}/ota/devices/", START_TIMEOUT, home.ca_cert, home, SERVER)
    for site in (make(home) for make in SITES):
        wait_for_url(f"https://{site.host(home)}/v2/", START_TIMEOUT, home.public_ca_cert, home, site.name)
    return info


def bring_down(home: FactoryHome) -> list[str]:
    """Stop every service; the names of those that were running."""
    return [service for service in SERVICES if stop_process(home, service)]


@main.command()
@home_option
@click.option("--factory", default=None, help=f"Factory name (first `up` only; default {DEFAULT_FACTORY!r}).")
@click.option("--hub-blob-redirect", is_flag=True,
              help="The hub answers blob GETs with a redirect to the blob storage, as the real hub does "
                   "(first `up` only; by default it serves them, so its log counts every byte).")
def up(home_dir: Path, factory: str | None, hub_blob_redirect: bool) -> None:
    """Start the factory (creating it on first use); print its URLs and token as JSON."""
    click.echo(json.dumps(bring_up(_home(home_dir), factory, hub_blob_redirect)))


@main.command()
@home_option
def down(home_dir: Path) -> None:
    """Stop the factory's processes."""
    stopped = bring_down(_home(home_dir))
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@main.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(home_dir: Path, as_json: bool) -> None:
    """Say which of the factory's processes run."""
    home = _home(home_dir)
    services = {s: {"running": process_running(home, s), "pid": service_pid(home, s)} for s in SERVICES}
    configured = home.state_file.exists()
    # A configured factory's status carries `up`'s JSON too, so scripts can read the URLs here.
    report = (up_info(home) if configured else {"home": str(home.root)}) | {
        "configured": configured, "up": all(s["running"] for s in services.values()), "services": services}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for name, service in services.items():
        click.echo(f"{name}: " + (f"running (pid {service['pid']})" if service["running"] else "stopped"))
    if configured and report["up"]:
        click.echo(f"gateway {report['gateway']}  api {report['api']}  registry {report['registry']}  "
                   f"third party {report['thirdparty']}  storage {report['storage']}")


@main.command()
@home_option
@click.option("--device", required=True, help="Device name or uuid.")
@click.option("--kind", type=click.Choice(sorted(LOGS)), default="events", show_default=True)
def events(home_dir: Path, device: str, kind: str) -> None:
    """Print what a device reported (events or app states), one JSON object a line."""
    records = DeviceRecords(_configured(home_dir))
    record = records.find(device)
    if record is None:
        raise UsageError(f"no device {device!r}")
    for item in records.log(record["uuid"], kind):
        click.echo(json.dumps(item, sort_keys=True))


@main.command()
@home_option
def devices(home_dir: Path) -> None:
    """List the registered devices (JSON lines, without their registry secrets)."""
    for record in DeviceRecords(_configured(home_dir)).all():
        click.echo(json.dumps({k: v for k, v in record.items() if k != "registry_secret"}, sort_keys=True))


def _from_now(seconds: int | None) -> datetime | None:
    return datetime.now(UTC) + timedelta(seconds=seconds) if seconds is not None else None


@main.command()
@home_option
@click.option("--expires-in", "expires_in", multiple=True, metavar="ROLE=SECONDS",
              help="Expiry of the new targets, snapshot or timestamp metadata from now (negative: already "
                   "expired), kept until the next change (repeatable).")
@click.option("--timestamp-expires-in", type=int, default=None, metavar="SECONDS",
              help="The same as --expires-in timestamp=SECONDS.")
def resign(home_dir: Path, expires_in: tuple[str, ...], timestamp_expires_in: int | None) -> None:
    """Re-sign the repositories' views at a new version."""
    repo = _repository(home_dir)
    pairs = [spec.partition("=") for spec in expires_in]
    try:
        expires = {role: _from_now(int(seconds)) for role, _, seconds in pairs}
    except ValueError as exc:
        raise UsageError(f"--expires-in takes ROLE=SECONDS: {exc}") from exc
    if timestamp_expires_in is not None:
        expires["timestamp"] = _from_now(timestamp_expires_in)
    try:
        repo.resign(expires)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    click.echo(json.dumps({"version": repo.version()}))


@main.command("rotate-root")
@home_option
@click.option("--role", "roles", multiple=True, type=click.Choice(["root", "targets", "snapshot", "timestamp"]),
              help="Role whose keys are replaced (repeatable; default: root).")
@click.option("--threshold", type=click.IntRange(1, 8), default=1, show_default=True,
              help="How many new keys each of those roles gets, all of them needed to sign.")
@click.option("--expires-in", type=int, default=None, metavar="SECONDS",
              help="Expiry of the new roots from now (default: a year; negative: already expired).")
def rotate_root(home_dir: Path, roles: tuple[str, ...], threshold: int, expires_in: int | None) -> None:
    """Sign the next root of the CI and production repositories (new keys for the roles named),
    trusted through the old ones (signed by the old and the new root keys)."""
    repo = _repository(home_dir)
    versions = repo.rotate_root(roles or ("root",), threshold, _from_now(expires_in))
    click.echo(json.dumps({"root_versions": versions, "version": repo.version()}))


@main.command()
@home_option
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The folder a device image ships them in (/usr/lib/sota/tuf on LmP).")
def roots(home_dir: Path, out: Path) -> None:
    """Write every root, `ci/N.root.json` and `prod/N.root.json`, as an OS image ships them."""
    click.echo(json.dumps(_repository(home_dir).export_roots(out)))


@main.command()
@home_option
@click.option("--version", required=True, type=int, help="Withdraw the Targets of this version.")
@click.option("--hwid", "hwids", multiple=True, help="Only the Target for this hardware id (repeatable).")
def withdraw(home_dir: Path, version: int, hwids: tuple[str, ...]) -> None:
    """Delete the Targets of VERSION from the repository (the real factory: `fioctl targets prune NAME`)."""
    repo = _repository(home_dir)
    names = sorted(name for name, info in repo.targets().items()
                   if info.get("custom", {}).get("version") == str(version)
                   and (not hwids or set(hwids) & set(info["custom"].get("hardwareIds", []))))
    if not names:
        raise UsageError(f"no Target of version {version}" + (f" for {', '.join(hwids)}" if hwids else ""))
    repo.remove_targets(names)
    click.echo(json.dumps({"withdrawn": names, "version": repo.version()}))


def _repository(home_dir: Path) -> TufRepository:
    repo = TufRepository(_configured(home_dir))
    if not repo.initialized():
        raise NotConfiguredError(f"the factory in {home_dir} has no TUF repository yet: run `up`")
    return repo


main.add_command(publish_command)
main.add_command(publish_broken_command)
main.add_command(offline_bundle_command)


if __name__ == "__main__":
    main()
