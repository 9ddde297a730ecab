"""`fioup-flow daemon`: the agent a device is left alone with (the loop is `fioup_flow.daemon`)."""

from __future__ import annotations

import logging

import click

from fioup_flow.cli.progress import progress_option
from fioup_flow.config import Config
from fioup_flow.daemon import Daemon


@click.command("daemon")
@progress_option(default="off")
@click.option("--once", is_flag=True,
              help="Go on with the update in progress, check and apply, until a cycle would sleep; exit with "
                   "that cycle's code (for tests and cron).")
@click.pass_obj
def daemon_command(obj, once: bool) -> None:
    """Keep this device on the latest Target it may run: continue, check, apply, report, sleep.

    Logs one line per event to stderr (the journal under systemd). SIGTERM or SIGINT stop it at a
    node boundary, the update left resumable (exit 0); SIGHUP reloads the config.
    """
    for name in ("fioup_flow", "tasks"):
        logging.getLogger(name).setLevel(logging.DEBUG if obj.verbose else logging.INFO)
    raise SystemExit(Daemon(lambda: Config.load(obj.cfg_dirs)).run(once=once))
