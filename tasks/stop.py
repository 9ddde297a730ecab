"""Stop an app's running version (node `stop:<app>`): `docker compose down` by project name.

Done when no container of the project runs an image outside `keep` (the image IDs of the
version that replaces it; empty when the app is removed). That check matters on resume: if
the new version already started after this node ran, re-running `down` would take the new
version down again, and the check is what says it must not.
"""

from __future__ import annotations

import docker

from fioup_flow.errors import StopError
from fioup_flow.task import Node, TaskContext
from tasks import appstate, compose

KIND = "stop"


def node(app: str, keep_image_ids: list[str]) -> Node:
    return Node(id=f"stop:{app}", kind=KIND, params={"app": app, "keep": sorted(keep_image_ids)}, resource="docker")


class StopApp:
    kind = KIND

    def __init__(self, engine: docker.DockerClient):
        self.engine = engine

    def is_done(self, node: Node) -> bool:
        keep = set(node.params["keep"])
        return all(s.image_id in keep for s in appstate.services(self.engine, node.params["app"]))

    def run(self, node: Node, ctx: TaskContext) -> None:
        compose.down(node.params["app"], StopError)
