"""The `fioup-flow-factory` command (filled in by the factory work)."""

import click


@click.group()
def main() -> None:
    """A local FoundriesFactory stand-in: gateway, TUF repository and registry on loopback."""
