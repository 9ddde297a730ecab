"""Start an app version (node `start:<app>@<digest>`): `docker compose up -d` and wait until it is up.

fioup counts `compose up` exiting 0 as success; a container that crashes a second later or never
turns healthy goes unnoticed. Here the node is done only when every service of the version
runs its expected image, and is healthy where it has a health check, within a timeout.
"""

from __future__ import annotations

import time
from pathlib import Path

import docker

from fioup_flow.composeapp import AppTree
from fioup_flow.errors import StartError
from fioup_flow.task import Node, TaskContext
from tasks import appstate, compose
from tasks.install import installed_uri

KIND = "start"
POLL_S = 0.5


def node(app: str, uri: str, service_images: dict[str, str], timeout_s: float = 120.0) -> Node:
    """`service_images` maps each service to the image ID it must run."""
    digest = uri.rsplit("@", 1)[1]
    return Node(id=f"start:{app}@{digest}", kind=KIND,
                params={"app": app, "uri": uri, "services": dict(sorted(service_images.items())),
                        "timeout_s": timeout_s},
                resource="docker")


def node_for(tree: AppTree) -> Node:
    """The start node of an app version: what "this version runs" means, for every caller."""
    return node(tree.name, tree.uri, {service: image.image_id for service, image in tree.services.items()})


class StartApp:
    kind = KIND

    def __init__(self, compose_root: Path, engine: docker.DockerClient):
        self.root = compose_root
        self.engine = engine

    def _pending(self, node: Node) -> list[str]:
        """Services not yet up with their expected image, each with the reason."""
        running = {s.name: s for s in appstate.services(self.engine, node.params["app"])}
        pending = []
        for service, image_id in node.params["services"].items():
            state = running.get(service)
            if state is None:
                pending.append(f"{service}: no container")
            elif state.image_id != image_id:
                pending.append(f"{service}: runs another image")
            elif not state.up:
                pending.append(f"{service}: {state.state}{' (' + state.health + ')' if state.health else ''}")
        return pending

    def is_done(self, node: Node) -> bool:
        return installed_uri(self.root / node.params["app"]) == node.params["uri"] and not self._pending(node)

    def run(self, node: Node, ctx: TaskContext) -> None:
        app = node.params["app"]
        project = self.root / app
        if installed_uri(project) != node.params["uri"]:
            raise StartError(f"app {app}: the project in {project} is not the version to start")
        compose.up(app, project, StartError)
        deadline = time.monotonic() + float(node.params["timeout_s"])
        while pending := self._pending(node):
            if time.monotonic() > deadline:
                raise StartError(f"app {app} did not come up within {node.params['timeout_s']:.0f} s: "
                                 + "; ".join(pending))
            time.sleep(POLL_S)
