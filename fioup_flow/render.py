"""Views of a plan and where each node stands: a text table, Graphviz dot, Mermaid, JSON.

One row model (`rows`) feeds every view, so they cannot disagree about a node's state.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from fioup_flow.checkpoint import NodeRecord
from fioup_flow.graph import Plan
from fioup_flow.task import short_id

FORMATS = ("text", "dot", "mermaid", "json")

# One colour per state, as rich style, Graphviz fill and Mermaid fill.
COLOURS = {
    "pending": ("white", "#eeeeee"),
    "running": ("yellow", "#fff3b0"),
    "done": ("green", "#b7e4c7"),
    "failed": ("bold red", "#f4a3a3"),
    "skipped": ("bright_black", "#d0d0d0"),
}


def rows(plan: Plan, records: dict[str, NodeRecord]) -> list[dict[str, Any]]:
    """One dict per node, in plan order: what every view shows."""
    out = []
    for node in plan.nodes():
        record = records.get(node.id, NodeRecord())
        duration = record.duration
        out.append({
            "id": node.id, "kind": node.kind, "resource": node.resource, "size": node.size,
            "state": record.state, "attempts": record.attempts,
            "duration_s": round(duration, 3) if duration is not None else None,
            "error": record.error, "after": plan.dependencies(node.id),
        })
    return out


def render_json(plan: Plan, records: dict[str, NodeRecord]) -> str:
    return json.dumps({
        "plan_id": plan.plan_id, "meta": plan.meta, "nodes": rows(plan, records),
        "edges": [{"from": u, "to": v} for u, v in plan.edges()],
    }, sort_keys=True, indent=2)


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_dot(plan: Plan, records: dict[str, NodeRecord]) -> str:
    lines = [f"digraph {_dot_quote('plan ' + plan.plan_id)} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica"];']
    for row in rows(plan, records):
        label = f"{row['id']}\\n{row['state']}" + (f" ({row['attempts']} tries)" if row["attempts"] > 1 else "")
        lines.append(f"  {_dot_quote(row['id'])} [label=\"{label.replace(chr(34), chr(92) + chr(34))}\", "
                     f"fillcolor=\"{COLOURS[row['state']][1]}\"];")
    lines += [f"  {_dot_quote(u)} -> {_dot_quote(v)};" for u, v in plan.edges()]
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_mermaid(plan: Plan, records: dict[str, NodeRecord]) -> str:
    """A Mermaid flowchart (GitHub renders it): ids are aliased, labels carry the real ids."""
    table = rows(plan, records)
    alias = {row["id"]: f"n{i}" for i, row in enumerate(table)}
    lines = ["flowchart TD"]
    for row in table:
        label = f"{row['id']}<br/>{row['state']}".replace('"', "#quot;")
        lines.append(f'  {alias[row["id"]]}["{label}"]:::{row["state"]}')
    lines += [f"  {alias[u]} --> {alias[v]}" for u, v in plan.edges()]
    lines += [f"  classDef {state} fill:{fill}" for state, (_, fill) in COLOURS.items()]
    return "\n".join(lines) + "\n"


def _after(ids: list[str]) -> str:
    return ", ".join(short_id(i) for i in ids) if len(ids) <= 2 else f"{len(ids)} nodes"


def render_table(plan: Plan, records: dict[str, NodeRecord]) -> Group:
    """A rich table in plan order, each state in its colour, then the errors of failed nodes in full."""
    target = plan.meta.get("target")
    table = Table(title=f"plan {plan.plan_id}" + (f" — target {target}" if target else ""), title_justify="left",
                  box=None, header_style="bold", pad_edge=False)
    for column in ("state", "node", "after", "tries", "time"):
        table.add_column(column, overflow="fold")
    table_rows = rows(plan, records)
    for row in table_rows:
        table.add_row(Text(row["state"], style=COLOURS[row["state"]][0]), short_id(row["id"]), _after(row["after"]),
                      str(row["attempts"] or ""), f"{row['duration_s']:.2f}s" if row["duration_s"] is not None else "")
    errors = [Text(f"failed {row['id']}: {row['error']}", style="red") for row in table_rows if row["state"] == "failed"]
    return Group(table, *errors)
