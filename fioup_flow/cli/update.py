"""Commands about the update in progress: graph, status, cancel (apply and resume later)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
