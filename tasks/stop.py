"""Stop an app's running version (node `stop:<app>`), by compose project name.

An app that leaves the device is taken down (`compose down`: containers and networks go,
volumes stay). An app being updated has no stop node: its start node's `compose up` replaces the
old containers itself. Plans frozen before that stop such an app first (`keep` names the new
version's images): it is only stopped (`compose stop`), its network kept for the `compose up`
that follows, and a resume runs those plans as frozen.

Done when no container of the project still runs an image outside `keep` (the image IDs of
the version that replaces it; empty when the app is removed), and for a removed app when no
container is left at all. That check matters on resume: if the new version already started
after this node ran, stopping again would take the new version down, and the check says no.
"""

from __future__ import annotations

import docker

from fioup_flow.errors import StopError
from fioup_flow.task import Node, TaskContext
from tasks import appstate
from tasks.compose import Compose

KIND = "stop"


def node(app: str) -> Node:
    """The node that takes down an app leaving the device (`keep` empty: no image of it stays up)."""
    return Node(id=f"stop:{app}", kind=KIND, params={"app": app, "keep": []}, resource="docker")


class StopApp:
    kind = KIND

    def __init__(self, engine: docker.DockerClient, compose: Compose):
        self.engine = engine
        self.compose = compose

    def is_done(self, node: Node) -> bool:
        keep = set(node.params["keep"])
        services = appstate.services(self.engine, node.params["app"])
        if not keep:
            return not services
        return all(s.image_id in keep or s.state != "running" for s in services)

    def run(self, node: Node, ctx: TaskContext) -> None:
        if node.params["keep"]:
            self.compose.stop(node.params["app"], StopError)
        else:
            self.compose.down(node.params["app"], StopError)
