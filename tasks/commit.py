"""Record the new Target as what the device runs (node `commit:<target>`).

This is the update's point of no return, taken only after every app of the Target started:
from here `check`, `status` and the next update see the new Target as current. The node says so
(`point_of_no_return`): once it is recorded done, a resume trusts it and every node before it,
so an app that stops or turns unhealthy later cannot reopen an update that finished; bringing
it back is the next update's job (it plans a repair).
"""

from __future__ import annotations

from pathlib import Path

from fioup_flow.installed import current_target, save_current_target
from fioup_flow.targets import App, Target
from fioup_flow.task import Node, TaskContext

KIND = "commit"


def node(target: Target) -> Node:
    return Node(id=f"commit:{target.name}", kind=KIND, params={
        "name": target.name, "version": target.version, "custom": target.custom,
        "apps": [{"name": a.name, "uri": a.uri} for a in target.apps],
    }, point_of_no_return=True)


def target_of(node: Node) -> Target:
    p = node.params
    return Target(p["name"], int(p["version"]), tuple(App(a["name"], a["uri"]) for a in p["apps"]), p["custom"])


class CommitTarget:
    kind = KIND

    def __init__(self, flow_dir: Path):
        self.flow_dir = flow_dir

    def is_done(self, node: Node) -> bool:
        current = current_target(self.flow_dir)
        wanted = target_of(node)
        return current is not None and (current.name, current.apps) == (wanted.name, wanted.apps)

    def run(self, node: Node, ctx: TaskContext) -> None:
        save_current_target(self.flow_dir, target_of(node))
