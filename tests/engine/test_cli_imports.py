"""The command line starts with only what the chosen command uses: `--help` lists every command
without importing one, `status` reads the device without TUF, rich or the agent's wiring, and
`resume` (at every boot, writing to the journal) shows its progress without rich."""

from __future__ import annotations

import subprocess
import sys

import click

from fioup_flow.cli import SUBCOMMANDS, main
from tests.engine.conftest import Device, failing_plan

# what a command that does not need them must not pay for at every start
HEAVY = {"docker", "requests", "urllib3", "tuf", "securesystemslib", "cryptography", "rich", "diskcache", "yaml",
         "tenacity", "networkx"}

# `fioup-flow` in a fresh interpreter that names, as its last line on stderr, every module it imported
RUN_AND_LIST = ("import atexit, sys\n"
                "atexit.register(lambda: print(' '.join(sorted(sys.modules)), file=sys.stderr))\n"
                "from fioup_flow.cli import main\n"
                "main()")


def imported(*args: str) -> set[str]:
    """Every module a fresh `fioup-flow ARGS` imported, whatever its exit (stderr is no terminal)."""
    done = subprocess.run([sys.executable, "-c", RUN_AND_LIST, *args], capture_output=True, text=True, timeout=60)
    return set(done.stderr.splitlines()[-1].split())


def test_help_lists_each_command_by_the_first_sentence_of_its_own_help() -> None:
    ctx = click.Context(main)
    assert main.list_commands(ctx) == sorted(SUBCOMMANDS)
    for name, subcommand in SUBCOMMANDS.items():
        assert main.get_command(ctx, name).get_short_help_str(limit=1000) == subcommand.summary


def test_help_imports_no_command_and_no_library_but_click() -> None:
    modules = imported("--help")
    assert not {m.split(".")[0] for m in modules} & HEAVY
    assert not {m for m in modules if m.startswith("fioup_flow.cli.")}


def test_status_of_an_update_in_progress_imports_neither_tuf_nor_rich_nor_networkx_nor_the_agent(
        device: Device) -> None:
    assert device.run(failing_plan())[0] == 40  # an update in progress, one node failed
    modules = imported("-c", str(device.config), "status")
    assert "fioup_flow.cli.status" in modules and "fioup_flow.checkpoint" in modules
    assert not {m for m in modules if m.split(".")[0] in ("tuf", "rich", "networkx") or m == "fioup_flow.agent"}


def test_resume_to_a_journal_imports_no_rich(device: Device) -> None:
    modules = imported("-c", str(device.config), "resume")
    assert "fioup_flow.agent" in modules and not {m for m in modules if m.split(".")[0] == "rich"}
