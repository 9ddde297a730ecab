"""Start an app version and see it healthy: nodes `start:<app>@<digest>` and `healthy:<app>@<digest>`.

fioup counts `compose up` exiting 0 as success; a container that crashes a second later or never
turns healthy goes unnoticed. Here starting is done when every service of the version runs its
expected image, and the update goes on only once each is also healthy where it has a health
check, within a timeout. The two are separate nodes so that waiting for health does not hold
the Docker slot: the next app can be stopped and started meanwhile.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import docker
import requests

from fioup_flow.composeapp import AppTree
from fioup_flow.errors import StartError
from fioup_flow.task import Node, TaskContext, TransientError
from tasks import appstate
from tasks.compose import Compose
from tasks.install import installed_uri
from tasks.portleak import EngineRestart

START = "start"
HEALTHY = "healthy"
POLL_S = 0.1
RUNNING_TIMEOUT_S = 30.0


def _params(tree: AppTree, timeout_s: float) -> dict:
    return {"app": tree.name, "uri": tree.uri, "timeout_s": timeout_s,
            "services": {service: image.image_id for service, image in sorted(tree.services.items())}}


def node_for(tree: AppTree) -> Node:
    """The node that starts an app version (its id names the version)."""
    return Node(id=f"start:{tree.name}@{tree.uri.rsplit('@', 1)[1]}", kind=START,
                params=_params(tree, RUNNING_TIMEOUT_S), resource="docker")


def healthy_node_for(tree: AppTree, timeout_s: float = 120.0) -> Node:
    """The node that waits until the version runs and is healthy: what "this version is up" means."""
    return Node(id=f"healthy:{tree.name}@{tree.uri.rsplit('@', 1)[1]}", kind=HEALTHY,
                params=_params(tree, timeout_s), resource="cpu")


PORT_TAKEN = "port is already allocated"
# a container attached to a network the engine no longer has (its network database lost, or moved
# aside, after a power cut): compose keeps a container whose config is unchanged, so only
# recreating it attaches it to the app's network as compose makes it anew
NETWORK_GONE = re.compile(r"network [0-9a-f]{64} not found")
NO_CONTAINER = "no container"
PORT_TAKEN_HINT = ("another container publishes that port, or, after a power cut, the Docker engine still "
                   "holds it for a container it removed at boot (see `pacman.engine_restart_command`): "
                   "free it (restarting the engine does), then run `fioup-flow resume`")


class StartRefused(StartError, TransientError):
    """The engine tried to start a container and failed. Some causes pass (iptables busy while
    another engine sets up its chains), others stay (a port taken): retry within the budget."""


class ContainerMissing(StartError, TransientError):
    """compose up returned 0 yet a service has no container: compose exits 0 when the engine refuses
    to create the app's network (an iptables hiccup, say), and that may heal: try again."""


def pending(engine: docker.DockerClient, node: Node, need_health: bool) -> tuple[list[str], list[str]]:
    """Services of the version not yet running its image (or not yet healthy), each with the reason,
    and the start errors among them: the engine tried and failed, waiting will not help."""
    running = {s.name: s for s in appstate.services(engine, node.params["app"])}
    problems, failed = [], []
    for service, image_id in node.params["services"].items():
        state = running.get(service)
        if state is None:
            problems.append(f"{service}: {NO_CONTAINER}")
        elif state.image_id != image_id:
            problems.append(f"{service}: runs another image")
        elif state.state in ("created", "exited") and state.error:
            failed.append(f"{service}: {state.error}")
        elif state.state != "running" or (need_health and not state.up):
            problems.append(f"{service}: {state.state}{' (' + state.health + ')' if state.health else ''}")
    return problems + failed, failed


def wait_until(engine: docker.DockerClient, ctx: TaskContext, need_health: bool, what: str,
               after_up: bool = False) -> None:
    """Poll until the version runs (and is healthy if `need_health`). Right `after_up`, a service
    with no container is a failure: compose exits 0 when the engine refuses the app's network.
    A stop request ends the wait (Interrupted): waiting has no effect to leave half done."""
    node = ctx.node
    timeout_s = float(node.params["timeout_s"])
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            problems, failed = pending(engine, node, need_health)
        except requests.ConnectionError:  # the engine restarting (see tasks.portleak): wait for it
            problems, failed = ["the Docker engine does not answer"], []
        if not problems:
            return
        if after_up and (missing := [p.split(":", 1)[0] for p in problems if p.endswith(NO_CONTAINER)]):
            raise ContainerMissing(f"app {node.params['app']}: compose up left no container for " + ", ".join(missing))
        if failed:
            hint = f" ({PORT_TAKEN_HINT})" if any(PORT_TAKEN in f for f in failed) else ""
            raise StartRefused(f"app {node.params['app']} failed to {what}: " + "; ".join(failed) + hint)
        if time.monotonic() > deadline:
            raise StartError(f"app {node.params['app']} did not {what} within {timeout_s:.0f} s: "
                             + "; ".join(problems))
        ctx.sleep(POLL_S)


class _VersionTask:
    """What both nodes check: the project is this version and its services are (healthy and) up."""

    need_health = False

    def __init__(self, compose_root: Path, engine: docker.DockerClient):
        self.root = compose_root
        self.engine = engine

    def is_done(self, node: Node) -> bool:
        return (installed_uri(self.root / node.params["app"]) == node.params["uri"]
                and not pending(self.engine, node, self.need_health)[0])


class StartApp(_VersionTask):
    """`compose up`, then wait until every service runs its image. Two refusals that a power cut
    leaves behind get one more try: a port the engine leaked itself (see `tasks.portleak`), after
    `engine_restart` ran, and a container on a network the engine lost, recreated."""

    kind = START

    def __init__(self, compose_root: Path, engine: docker.DockerClient, engine_restart: EngineRestart,
                 compose: Compose):
        super().__init__(compose_root, engine)
        self.engine_restart = engine_restart
        self.compose = compose

    def run(self, node: Node, ctx: TaskContext) -> None:
        project = self.root / node.params["app"]
        if installed_uri(project) != node.params["uri"]:
            raise StartError(f"app {node.params['app']}: the project in {project} is not the version to start")
        try:
            self._start(ctx, project)
        except StartError as exc:
            if self.engine_restart.frees(str(exc)):
                self._start(ctx, project)
            elif NETWORK_GONE.search(str(exc)):
                self._start(ctx, project, recreate=True)
            else:
                raise

    def _start(self, ctx: TaskContext, project: Path, recreate: bool = False) -> None:
        # compose can exit 0 with a container left "created" (a port taken, no address pool left),
        # or none at all (the engine refused the app's network): wait_until tells both apart.
        # A compose up under way is never cut short; the wait after it is.
        self.compose.up(ctx.node.params["app"], project, StartError, recreate)
        wait_until(self.engine, ctx, False, "start", after_up=True)


class AppHealthy(_VersionTask):
    kind = HEALTHY
    need_health = True

    def run(self, node: Node, ctx: TaskContext) -> None:
        wait_until(self.engine, ctx, True, "turn healthy")
