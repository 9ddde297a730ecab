"""The `fioup-flow` command: global options, error-to-exit-code mapping, and the subcommands.

Each subcommand module holds a group of related commands; this module wires them together and
owns the one place where a `FioupFlowError` becomes a message on stderr and an exit code.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from functools import cached_property

import click

from fioup_flow import __version__
from fioup_flow.config import Config, cfg_dirs_from_env, split_list
from fioup_flow.errors import FioupFlowError, NoSpaceError, exit_code_of


@dataclass
class CliContext:
    """What every command gets: the search path for the config and the config, loaded on first use."""

    cfg_dirs: tuple[str, ...]
    verbose: bool = False

    @cached_property
    def config(self) -> Config:
        return Config.load(self.cfg_dirs)


class FioupFlowGroup(click.Group):
    """A click group that turns fioup-flow's errors into a one-line message and their exit code."""

    def invoke(self, ctx: click.Context):  # noqa: D102 - click's hook
        try:
            return super().invoke(ctx)
        except FioupFlowError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            if exit_code_of(exc) != NoSpaceError.exit_code:
                raise
            click.secho(f"error: the disk is full ({exc}): free some space, then run `fioup-flow resume`",
                        fg="red", err=True)
            sys.exit(NoSpaceError.exit_code)


@click.group(cls=FioupFlowGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, envvar="FIOUP_FLOW_VERBOSE", help="Log debug messages to stderr.")
@click.option(
    "-c",
    "--cfg-dirs",
    metavar="PATHS",
    help="Comma-separated config files and folders to search for *.toml "
    "(default: $FIOUP_FLOW_CFG_DIRS, else /usr/lib/sota/conf.d,/var/sota/sota.toml,/etc/sota/conf.d/).",
)
@click.version_option(__version__, "--version", prog_name="fioup-flow")
@click.pass_context
def main(ctx: click.Context, verbose: bool, cfg_dirs: str | None) -> None:
    """Update the Docker Compose apps of this device from its factory, resumably."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = CliContext(cfg_dirs=split_list(cfg_dirs) if cfg_dirs else cfg_dirs_from_env(), verbose=verbose)


def _register_commands() -> None:
    from fioup_flow.cli import apply, daemon, device, update

    for module in (device, apply, update, daemon):
        for command in module.COMMANDS:
            main.add_command(command)


_register_commands()
