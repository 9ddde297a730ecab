"""How commands print machine-readable output: compact JSON on one line, for scripts and tests."""

from __future__ import annotations

import json
from typing import Any

import click


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, sort_keys=True, separators=(",", ":")))
