"""The plan of an update: a DAG of nodes, checked, and frozen to byte-stable JSON.

The plan is frozen into the checkpoint store before the first side effect, and a resumed run
executes exactly the frozen plan. Freezing must therefore be deterministic (sorted keys, sorted
nodes and edges), so that the same plan always has the same bytes and a restart can prove it
runs what was planned.

networkx is imported when the first plan is made, not with this module: its import alone is
about 13 MB of a device's memory, and a daemon with nothing to do never makes a plan.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from fioup_flow.errors import FioupFlowError
from fioup_flow.task import RESOURCES, Node

if TYPE_CHECKING:
    import networkx


def _nx():  # noqa: ANN202 - the networkx module, imported on first use (see the module's docstring)
    import networkx  # noqa: PLC0415

    return networkx


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class PlanError(FioupFlowError):
    """The plan is not a valid DAG (cycle, dependency on an unknown node, duplicate id)."""


def new_plan_id() -> str:
    """A ULID-like id: 48-bit millisecond time then 80 random bits, Crockford base32, 26 chars.

    Ids sort by creation time, so the history of updates sorts by plan id.
    """
    value = (int(time.time() * 1000) & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def dumps(data: Any) -> str:
    """The one JSON form used for frozen data: sorted keys, no spaces, so it is byte-stable."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Plan:
    """A networkx DiGraph of Nodes (edge u -> v: v runs after u), a plan id and JSON metadata."""

    def __init__(self, plan_id: str | None = None, meta: dict[str, Any] | None = None):
        self.plan_id = plan_id or new_plan_id()
        self.meta: dict[str, Any] = dict(meta or {})
        self.graph: networkx.DiGraph = _nx().DiGraph()

    def add(self, node: Node, after: Iterable[str] = ()) -> Node:
        """Add `node`, to run after the nodes named in `after` (they may be added later)."""
        if node.id in self.graph and "node" in self.graph.nodes[node.id]:
            raise PlanError(f"plan {self.plan_id}: node {node.id!r} added twice")
        if node.resource not in RESOURCES:
            raise PlanError(f"plan {self.plan_id}: node {node.id!r} has unknown resource {node.resource!r}")
        self.graph.add_node(node.id, node=node)
        self.graph.add_edges_from((dep, node.id) for dep in after)
        return node

    def validate(self) -> None:
        """Raise PlanError on a dependency that names no node, or on a cycle."""
        for node_id, data in self.graph.nodes(data=True):
            if "node" not in data:
                users = sorted(self.graph.successors(node_id))
                raise PlanError(f"plan {self.plan_id}: {', '.join(users)} depend(s) on unknown node {node_id!r}")
        if _nx().is_directed_acyclic_graph(self.graph):  # fast; find_cycle only to name the culprit
            return
        cycle = _nx().find_cycle(self.graph)
        raise PlanError(f"plan {self.plan_id}: cycle {' -> '.join([u for u, _ in cycle] + [cycle[0][0]])}")

    def node(self, node_id: str) -> Node:
        return self.graph.nodes[node_id]["node"]

    def __contains__(self, node_id: str) -> bool:
        return node_id in self.graph

    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    def order(self) -> list[str]:
        """Node ids in a deterministic topological order (ties broken by id)."""
        return list(_nx().lexicographical_topological_sort(self.graph))

    def nodes(self) -> Iterator[Node]:
        for node_id in self.order():
            yield self.node(node_id)

    def dependencies(self, node_id: str) -> list[str]:
        return sorted(self.graph.predecessors(node_id))

    def dependents(self, node_id: str) -> list[str]:
        return sorted(self.graph.successors(node_id))

    def ancestors(self, node_id: str) -> set[str]:
        """Every node that runs before `node_id`, directly or not."""
        return _nx().ancestors(self.graph, node_id)

    def edges(self) -> list[tuple[str, str]]:
        return sorted(self.graph.edges())

    def to_data(self) -> dict[str, Any]:
        return {
            "plan_id": self.plan_id,
            "meta": self.meta,
            "nodes": [self.node(n).to_dict() for n in sorted(self.graph.nodes)],
            "edges": [list(e) for e in self.edges()],
        }

    def to_json(self) -> str:
        """The frozen form: validated, and the same bytes for the same plan."""
        self.validate()
        return dumps(self.to_data())

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_data(json.loads(text))

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Plan:
        """A plan from its frozen form (`to_data`), validated."""
        plan = cls(plan_id=data["plan_id"], meta=data.get("meta", {}))
        for raw in data["nodes"]:
            plan.graph.add_node(raw["id"], node=Node.from_dict(raw))
        plan.graph.add_edges_from((u, v) for u, v in data["edges"])
        plan.validate()
        return plan
