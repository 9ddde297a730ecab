"""Commands that talk to the factory about this device: register, check."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
