"""`fioup-flow-factory publish`: build, push and list compose apps as Targets of the factory."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fioup_flow.factory.home import FactoryHome


def publish_apps(home: FactoryHome, version: int, apps: dict[str, Path], tags: list[str],
                 hwids: list[str], layer_mb: dict[str, int] | int = 0) -> dict:
    """Publish `apps` as version `version`; returns the Targets added (name -> TUF file info)."""
    raise NotImplementedError("publish is being written")


@click.command("publish")
@click.option("--home", "home_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--version", required=True, type=int, help="Target version (custom.version).")
@click.option("--app", "app_specs", multiple=True, required=True, metavar="NAME=PATH")
@click.option("--tag", "tags", multiple=True, help="Target tag (default: main).")
@click.option("--hwid", "hwids", multiple=True, help="Hardware id (default: from the machine).")
@click.option("--layer-mb", "layer_mb", multiple=True, metavar="[APP=]MB")
def publish_command(home_dir: Path, version: int, app_specs: tuple[str, ...], tags: tuple[str, ...],
                    hwids: tuple[str, ...], layer_mb: tuple[str, ...]) -> None:
    """Build the apps' images, push them and the apps to the registry, add the Targets."""
    apps = dict(spec.split("=", 1) for spec in app_specs)
    added = publish_apps(FactoryHome(home_dir), version, {k: Path(v) for k, v in apps.items()},
                         list(tags) or ["main"], list(hwids), 0)
    click.echo(json.dumps(added, indent=2, sort_keys=True))
