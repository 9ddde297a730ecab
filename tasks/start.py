"""Start an app version and see it stay up: nodes `start:<app>@<digest>` and `healthy:<app>@<digest>`.

fioup counts `compose up` exiting 0 as success, and fioup's status counts a crash-looping
container as running whenever it happens to be up when looked at; a container that crashes a
second later goes unnoticed. Here:

- starting is done when every service compose creates runs the version's image (a one-shot may
  instead have exited 0 already); a service that exited with an error fails the start at once;
- the healthy node then watches the app: every service up (healthy where it has a health check)
  and staying up for the health window (`pacman.health_window`) from its own start, with no
  restart (its container's id, StartedAt and RestartCount unchanged, never `restarting`); a
  one-shot is fine once it exited 0. Turning up is bounded by `timeout_s` (120 s, as Mender's
  docker-compose module polls, `src/docker-compose_base.sh`, which counts only `running:healthy`
  and `running:no_check` and so fails every one-shot); the window by its own length.

What each service should do comes from the compose file (`composeapp.Expectation`): a service
compose does not create (`replicas: 0`, a profile that is not active) is not waited for. A
failure of either node that waiting cannot mend is a permanent StartError: the Target is bad
and the update is rolled back (`fioup_flow.rollback`). The two are separate nodes so that
waiting does not hold the Docker slot: the next app can be stopped and started meanwhile.

Both nodes say whether their effect is in place by looking at the engine: the healthy node's
"passed its window" is every service up (or done) and each running container started at least
`window_s` seconds ago, which is true after the window and stays true until a restart.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import requests

from fioup_flow.composeapp import AppTree, Expectation
from fioup_flow.errors import StartError
from fioup_flow.task import Node, TaskContext, TransientError
from tasks import appstate
from tasks.compose import Compose
from tasks.install import installed_uri
from tasks.portleak import EngineRestart

START = "start"
HEALTHY = "healthy"
POLL_S = 0.1
WATCH_POLL_S = 0.25  # restarts are read from the engine's counters, so a slower poll misses none
RUNNING_TIMEOUT_S = 30.0
HEALTHY_TIMEOUT_S = 120.0


def _params(tree: AppTree, timeout_s: float) -> dict:
    return {"app": tree.name, "uri": tree.uri, "timeout_s": timeout_s,
            "services": {service: {"image": image.image_id, **tree.expect.get(service, Expectation()).as_json()}
                         for service, image in sorted(tree.services.items())}}


def node_for(tree: AppTree) -> Node:
    """The node that starts an app version (its id names the version)."""
    return Node(id=f"start:{tree.name}@{tree.uri.rsplit('@', 1)[1]}", kind=START,
                params=_params(tree, RUNNING_TIMEOUT_S), resource="docker")


def healthy_node_for(tree: AppTree, window_s: float = 0.0, timeout_s: float = HEALTHY_TIMEOUT_S) -> Node:
    """The node that sees the version up and staying up for `window_s` seconds."""
    return Node(id=f"healthy:{tree.name}@{tree.uri.rsplit('@', 1)[1]}", kind=HEALTHY,
                params=dict(_params(tree, timeout_s), window_s=window_s), resource="cpu")


PORT_TAKEN = "port is already allocated"
# a container attached to a network the engine no longer has (its network database lost, or moved
# aside, after a power cut): compose keeps a container whose config is unchanged, so only
# recreating it attaches it to the app's network as compose makes it anew. The daemon says "not
# found"; libnetwork, when the daemon still knew the network but its store lost it (an engine
# stopped mid-request by the power), "failed to create endpoint ...: network <id> does not exist"
NETWORK_GONE = re.compile(r"network [0-9a-f]{64} (not found|does not exist)")
NO_CONTAINER = "no container"
NETWORK_REFUSED = "failed to create network"  # compose's words when the engine refuses the app a network
PORT_TAKEN_HINT = ("another container publishes that port, or, after a power cut, the Docker engine still "
                   "holds it for a container it removed at boot (see `pacman.engine_restart_command`): "
                   "free it (restarting the engine does), then run `fioup-flow resume`")


class StartRefused(StartError, TransientError):
    """The engine tried to start a container and failed. Some causes pass (iptables busy while
    another engine sets up its chains), others stay (a port taken): retry within the budget."""


class ContainerMissing(StartError, TransientError):
    """A service has no container because the engine refused to create the app's network (no
    address pool left, an iptables hiccup): compose says so, or some versions exit 0 all the same.
    That may heal: try again."""


@dataclass(frozen=True)
class Wanted:
    """One service of the version as a node names it: its image and what running it well means."""

    image: str
    created: str = "yes"
    may_stop: bool = False

    @classmethod
    def of(cls, value: str | dict[str, Any]) -> Wanted:
        """From node params; a plan frozen before expectations existed names only the image."""
        return cls(value) if isinstance(value, str) else cls(value["image"], value.get("created", "yes"),
                                                              bool(value.get("may_stop", False)))


def wanted(node: Node) -> dict[str, Wanted]:
    return {service: Wanted.of(value) for service, value in node.params["services"].items()}


# what a look at one service says: fine, wait (may get better), refused (the engine could not start
# it: may pass), crashed (will not get better by waiting), skip (compose does not create it)
FINE, WAIT, REFUSED, CRASHED, SKIP = "fine", "wait", "refused", "crashed", "skip"


def judge_service(want: Wanted, state: appstate.ServiceState | None, need_health: bool) -> tuple[str, str]:
    """How one service stands, and why in words. `restarting` is a wait while starting (the engine
    is at it) and a crash once the version should be up."""
    if want.created == "no" or (state is None and want.created == "profile"):
        return SKIP, ""
    if state is None:
        return WAIT, NO_CONTAINER
    if state.image_id != want.image:
        return WAIT, "runs another image"
    if state.state in ("created", "exited") and state.error:
        return REFUSED, state.error
    if state.state == "exited":
        if want.may_stop and state.exit_code == 0:
            return FINE, "exited 0"
        return CRASHED, f"exited with code {state.exit_code}"
    if state.state == "restarting":
        return (CRASHED if need_health else WAIT), f"restarting (exit code {state.exit_code}, {state.restarts} restarts)"
    if state.state != "running" or (need_health and not state.up):
        return WAIT, state.state + (f" ({state.health})" if state.health else "")
    return FINE, state.state


def look(engine: docker.DockerClient, node: Node, need_health: bool) -> dict[str, tuple[str, str]]:
    """Each service of the version, judged; the engine not answering (it may be restarting, see
    tasks.portleak) is a wait."""
    try:
        running = {s.name: s for s in appstate.services(engine, node.params["app"])}
    except requests.ConnectionError:
        return {service: (WAIT, "the Docker engine does not answer") for service in node.params["services"]}
    return {service: judge_service(want, running.get(service), need_health) for service, want in wanted(node).items()}


def _listed(verdicts: dict[str, tuple[str, str]], *kinds: str) -> list[str]:
    return [f"{service}: {why}" for service, (kind, why) in verdicts.items() if kind in kinds]


def raise_refused(app: str, verdicts: dict[str, tuple[str, str]]) -> None:
    """A service the engine refused to start (its container keeps the engine's error) is a
    StartRefused, whether compose said so or, as it may, exited 0."""
    if refused := _listed(verdicts, REFUSED):
        hint = f" ({PORT_TAKEN_HINT})" if any(PORT_TAKEN in r for r in refused) else ""
        raise StartRefused(f"app {app} failed to start: " + "; ".join(refused) + hint)


def wait_until_started(engine: docker.DockerClient, ctx: TaskContext, after_up: bool = False) -> None:
    """Poll until every service runs the version's image (or, a one-shot, exited 0). Right `after_up`,
    a service with no container is a failure: compose exits 0 when the engine refuses the app's
    network. A stop request ends the wait (Interrupted): waiting has no effect to leave half done."""
    node = ctx.node
    app, timeout_s = node.params["app"], float(node.params["timeout_s"])
    deadline = time.monotonic() + timeout_s
    while True:
        verdicts = look(engine, node, need_health=False)
        if not _listed(verdicts, WAIT, REFUSED, CRASHED):
            return
        missing = [s for s, (kind, why) in verdicts.items() if kind == WAIT and why == NO_CONTAINER]
        if after_up and missing:
            raise ContainerMissing(f"app {app}: compose up left no container for " + ", ".join(missing))
        if crashed := _listed(verdicts, CRASHED):
            raise StartError(f"app {app} failed to start: " + "; ".join(crashed))
        raise_refused(app, verdicts)
        if time.monotonic() > deadline:
            raise StartError(f"app {app} did not start within {timeout_s:.0f} s: "
                             + "; ".join(_listed(verdicts, WAIT)))
        ctx.sleep(POLL_S)


@dataclass
class Watch:
    """The health window of one app version: what was seen of each service since the watch began.

    A service seen up is remembered by its container (id, StartedAt, RestartCount); any change of
    these, or the service no longer up (a one-shot may end, with 0), is a restart or a crash.
    Done when every service is fine and each running container started `window_s` seconds ago.
    """

    node: Node
    seen: dict[str, tuple[str, str, int]] = field(default_factory=dict)

    def see(self, engine: docker.DockerClient, now: float) -> tuple[list[str], list[str]]:
        """The services not up yet, and those up whose window is not over (both empty: the window
        passed), each with the reason; raises StartError on a failure."""
        try:
            states = appstate.services(engine, self.node.params["app"])
        except requests.ConnectionError:
            return ["the Docker engine does not answer"], []
        return self.judge(states, now)

    def judge(self, found: list[appstate.ServiceState], now: float) -> tuple[list[str], list[str]]:
        """`see`, given the app's containers as the engine describes them at time `now`."""
        node, window_s = self.node, float(self.node.params.get("window_s", 0))
        states = {s.name: s for s in found}
        awaited, ripening, failed = [], [], []
        for service, want in wanted(node).items():
            state = states.get(service)
            kind, why = judge_service(want, state, need_health=True)
            if service in self.seen and (broke := self._broke(service, state, kind, why)):
                failed.append(f"{service} {broke}")
            elif kind in (CRASHED, REFUSED):
                failed.append(f"{service} {why}")
            elif kind == WAIT:
                awaited.append(f"{service}: {why}")
            elif kind == FINE and state.state == "running":
                self.seen[service] = (state.container_id, state.started_at, state.restarts)
                up_for = now - (state.started or now)
                if up_for < window_s:
                    ripening.append(f"{service}: up {up_for:.1f} of {window_s:g} s")
        if failed:
            raise StartError(f"app {node.params['app']} did not stay up through its {window_s:g} s health window: "
                             + "; ".join(failed))
        return awaited, ripening

    def _broke(self, service: str, state: appstate.ServiceState | None, kind: str, why: str) -> str:
        """How a service seen up broke since, or "" if it did not."""
        if state is None:
            return "lost its container"
        if (state.container_id, state.started_at, state.restarts) != self.seen[service]:
            return f"restarted (restarts {self.seen[service][2]} -> {state.restarts})" if kind == FINE else why
        if kind != FINE:
            return f"went down: {why}"
        return ""


def is_up(engine: docker.DockerClient, compose_root: Path, tree: AppTree) -> bool:
    """Whether this version of the app is installed and up right now (healthy where it has a health
    check; a one-shot done), with no window: what runs, as the planner sees it."""
    node = healthy_node_for(tree)
    return (installed_uri(compose_root / tree.name) == tree.uri
            and not _listed(look(engine, node, need_health=True), WAIT, REFUSED, CRASHED))


class _VersionTask:
    """What both nodes check first: the project on disk is this version."""

    def __init__(self, compose_root: Path, engine: docker.DockerClient):
        self.root = compose_root
        self.engine = engine

    def installed(self, node: Node) -> bool:
        return installed_uri(self.root / node.params["app"]) == node.params["uri"]


class StartApp(_VersionTask):
    """`compose up`, then wait until every service runs its image. Two refusals that a power cut
    leaves behind get one more try: a port the engine leaked itself (see `tasks.portleak`), after
    `engine_restart` ran, and a container on a network the engine lost (or holds only in part: listed,
    yet unknown to its network controller): the app's containers and networks are taken down, and
    compose makes them anew."""

    kind = START

    def __init__(self, compose_root: Path, engine: docker.DockerClient, engine_restart: EngineRestart,
                 compose: Compose):
        super().__init__(compose_root, engine)
        self.engine_restart = engine_restart
        self.compose = compose

    def is_done(self, node: Node) -> bool:
        return self.installed(node) and not _listed(look(self.engine, node, need_health=False), WAIT, REFUSED, CRASHED)

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
                self.compose.down(node.params["app"], StartError)
                self._start(ctx, project)
            else:
                raise

    def _start(self, ctx: TaskContext, project: Path) -> None:
        # compose can exit 0 with a container left "created" (a port taken, no address pool left),
        # or none at all (the engine refused the app's network): the wait tells both apart. When it
        # fails, the engine's error on a container says whether the engine refused it (transient).
        # A compose up under way is never cut short; the wait after it is.
        try:
            self.compose.up(ctx.node.params["app"], project, StartError)
        except StartError as exc:
            app, verdicts = ctx.node.params["app"], look(self.engine, ctx.node, need_health=False)
            raise_refused(app, verdicts)
            if NETWORK_REFUSED in str(exc):
                raise ContainerMissing(f"app {app}: compose up left no container for "
                                       + ", ".join(_listed(verdicts, WAIT)) + f" ({exc})") from exc
            raise
        wait_until_started(self.engine, ctx, after_up=True)


class AppHealthy(_VersionTask):
    """Every service up within `timeout_s`, then staying up through the health window.

    An engine restart fioup-flow itself made meanwhile (`engine_restart`, to free a port the
    engine leaked for another app's start) stops and starts every container: that is not the
    app failing, and the watch begins again from the containers' new start."""

    kind = HEALTHY

    def __init__(self, compose_root: Path, engine: docker.DockerClient, engine_restart: EngineRestart):
        super().__init__(compose_root, engine)
        self.engine_restart = engine_restart

    def is_done(self, node: Node) -> bool:
        if not self.installed(node):
            return False
        try:
            return not any(Watch(node).see(self.engine, time.time()))
        except StartError:
            return False

    def run(self, node: Node, ctx: TaskContext) -> None:
        while True:
            restarts = self.engine_restart.restarts
            try:
                return self._watch(node, ctx)
            except StartError:
                if self.engine_restart.restarts == restarts:
                    raise
                ctx.logger.warning("app %s: the engine was restarted while it was watched; watching it again",
                                   node.params["app"])
                self.engine_restart.wait_until_back()

    def _watch(self, node: Node, ctx: TaskContext) -> None:
        watch = Watch(node)
        timeout_s = float(node.params["timeout_s"])
        deadline = time.monotonic() + timeout_s
        while True:
            awaited, ripening = watch.see(self.engine, time.time())
            if not awaited and not ripening:
                return
            if awaited and time.monotonic() > deadline:
                raise StartError(f"app {node.params['app']} did not turn healthy within {timeout_s:.0f} s: "
                                 + "; ".join(awaited))
            ctx.sleep(POLL_S if awaited else WATCH_POLL_S)
