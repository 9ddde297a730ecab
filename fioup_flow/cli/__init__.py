"""The `fioup-flow` command: global options, error-to-exit-code mapping, and the subcommands.

Each subcommand lives in a module of its group (`SUBCOMMANDS` says which), imported only when that
subcommand runs: a command pays for the libraries it uses and no other's (`--help` for none of
them; `status` for neither TUF nor the agent's wiring; a device's slow cores pay that at every
boot's `resume`). This module owns the one place where a `FioupFlowError` becomes a message on
stderr and an exit code.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from functools import cached_property

import click

from fioup_flow import __version__
from fioup_flow.config import Config, cfg_dirs_from_env, split_list
from fioup_flow.errors import FioupFlowError, NoSpaceError, exit_code_of


@dataclass(frozen=True)
class Subcommand:
    """Where a subcommand is defined (`module:attribute`), and the line `--help` lists it by: the
    first sentence of its own help, kept here so that listing them imports none (a test compares)."""

    path: str
    summary: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "apply": Subcommand("fioup_flow.cli.apply:apply_command",
                        "Update to Target VERSION (default: the latest that is not marked bad), or go on "
                        "with the update in progress."),
    "cancel": Subcommand("fioup_flow.cli.update:cancel",
                         "Abandon the update in progress, dropping its partial downloads."),
    "check": Subcommand("fioup_flow.cli.device:check_command",
                        "Refresh the metadata (TUF, or TLS alone in plain mode) and list the Targets for "
                        "this device."),
    "daemon": Subcommand("fioup_flow.cli.daemon:daemon_command",
                         "Keep this device on the latest Target it may run: continue, check, apply, report, "
                         "sleep."),
    "fetch": Subcommand("fioup_flow.cli.apply:fetch_command",
                        "Download and verify all that the update to VERSION (default: the latest that is "
                        "not marked bad) needs, touching no running app; the update stays in progress and "
                        "a later `apply` (or `resume`) installs it."),
    "graph": Subcommand("fioup_flow.cli.update:graph",
                        "Show the plan of the update in progress and where each node stands."),
    "register": Subcommand("fioup_flow.cli.device:register_command",
                           "Register this device with its factory and check the link to its Device Gateway."),
    "resume": Subcommand("fioup_flow.cli.apply:resume_command",
                         "Go on with the update in progress, if any (meant to run at boot)."),
    "status": Subcommand("fioup_flow.cli.status:status",
                         "Show the update in progress (node counts, failures) and the last updates."),
    "whoami": Subcommand("fioup_flow.cli.device:whoami_command", "Show what the factory knows about this device."),
}


@dataclass
class CliContext:
    """What every command gets: the search path for the config and the config, loaded on first use."""

    cfg_dirs: tuple[str, ...]
    verbose: bool = False

    @cached_property
    def config(self) -> Config:
        return Config.load(self.cfg_dirs)


class FioupFlowGroup(click.Group):
    """A click group whose subcommands are imported when chosen (`SUBCOMMANDS`), and that turns
    fioup-flow's errors into a one-line message and their exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:  # noqa: D102 - click's hook
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:  # noqa: D102
        subcommand = SUBCOMMANDS.get(cmd_name)
        if subcommand is None:
            return None
        module, _, attribute = subcommand.path.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The list `--help` shows, laid out as click does, from the summaries: no subcommand imported."""
        limit = formatter.width - 6 - max(map(len, SUBCOMMANDS))
        with formatter.section("Commands"):
            formatter.write_dl([(name, click.Command(name, help=SUBCOMMANDS[name].summary).get_short_help_str(limit))
                                for name in self.list_commands(ctx)])

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

