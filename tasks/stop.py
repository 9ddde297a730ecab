"""Stop an app's running version (node `stop:<app>`), by compose project name.

An app that leaves the device is taken down (`compose down`: containers and networks go,
volumes stay). An app being updated is only stopped (`compose stop`): its network stays and
the start node's `compose up` replaces the stopped containers, which keeps the window between
the last old container and the first new one as short as compose's own recreate.

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


def node(app: str, keep_image_ids: list[str]) -> Node:
    """`keep`: the image IDs of the version replacing the app; none when the app is removed."""
    return Node(id=f"stop:{app}", kind=KIND, params={"app": app, "keep": sorted(keep_image_ids)}, resource="docker")


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
