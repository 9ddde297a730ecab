"""What the Docker engine runs, seen per app: containers grouped by compose project.

Tasks use this to say whether their effect is in place (is the new version running, are the
old containers gone, is an image loaded), and `status` and the apps-states report use it to
describe the device. It only reads the engine; it never changes anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import docker
import docker.errors
import requests

from fioup_flow.errors import EngineUnavailableError

DEFAULT_ENGINE = "unix:///var/run/docker.sock"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


@dataclass(frozen=True)
class ServiceState:
    name: str
    container_id: str
    image_id: str
    state: str  # created | running | restarting | exited | ...
    health: str  # healthy | unhealthy | starting | "" (no health check)
    status: str  # Docker's human text, e.g. "Up 3 minutes (healthy)"
    error: str = ""  # why the engine could not start the container, if it tried and failed
    exit_code: int = 0  # of the last run, once it ended
    restarts: int = 0  # how often the engine restarted this container under its restart policy
    started_at: str = ""  # when the container last started, as the engine says it (RFC 3339)
    policy: str = ""  # its restart policy: "" or "no", "always", "unless-stopped", "on-failure"

    @property
    def up(self) -> bool:
        """Running, and healthy if the service has a health check."""
        return self.state == "running" and self.health in ("", "healthy")

    @property
    def finished(self) -> bool:
        """Exited 0 under a restart policy that lets it stay stopped: a one-shot that did its job."""
        return self.state == "exited" and self.exit_code == 0 and self.policy in ("", "no", "on-failure")

    @property
    def started(self) -> float | None:
        """`started_at` in seconds since the epoch; None if the container never started."""
        return rfc3339_seconds(self.started_at)


def rfc3339_seconds(text: str) -> float | None:
    """The engine's timestamps (`2026-01-02T03:04:05.123456789Z`, nanoseconds, UTC) in epoch seconds;
    None for the zero time the engine gives a container that never started."""
    if not text or text.startswith("0001-"):
        return None
    whole, _, fraction = text.rstrip("Z").partition(".")
    stamp = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return stamp + (float(f"0.{fraction.split('+')[0]}") if fraction else 0.0)


# what the Docker SDK raises when the engine does not answer (a lost connection is requests')
UNANSWERED = (docker.errors.DockerException, requests.exceptions.ConnectionError, requests.exceptions.Timeout)


def engine_address(environ: Mapping[str, str] = os.environ) -> str:
    """The engine fioup-flow drives: `DOCKER_HOST`, as the Docker SDK reads it, else the system one."""
    return environ.get("DOCKER_HOST") or DEFAULT_ENGINE


def unavailable(exc: BaseException) -> EngineUnavailableError:
    """The error (exit 7) for an engine that did not answer, naming its address."""
    return EngineUnavailableError(f"the Docker engine at {engine_address()} does not answer: {exc}")


def client() -> docker.DockerClient:
    """A client for the engine `DOCKER_HOST` names (the system one by default); asks the engine its API
    version, so an engine that does not answer is EngineUnavailableError (exit 7) here and now."""
    try:
        return docker.from_env(timeout=120)
    except UNANSWERED as exc:
        raise unavailable(exc) from exc


def services(engine: docker.DockerClient, app: str) -> list[ServiceState]:
    """The containers of compose project `app`, one per service (the newest if several)."""
    found: dict[str, ServiceState] = {}
    for c in engine.api.containers(all=True, filters={"label": f"{PROJECT_LABEL}={app}"}):
        name = c["Labels"].get(SERVICE_LABEL, c["Id"][:12])
        inspect = engine.api.inspect_container(c["Id"])
        state = inspect["State"]
        found[name] = ServiceState(
            name=name, container_id=c["Id"], image_id=inspect["Image"], state=state["Status"],
            health=(state.get("Health") or {}).get("Status", ""), status=c.get("Status", ""),
            error=state.get("Error") or "", exit_code=int(state.get("ExitCode") or 0),
            restarts=int(inspect.get("RestartCount") or 0), started_at=state.get("StartedAt") or "",
            policy=((inspect.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name") or "",
        )
    return [found[k] for k in sorted(found)]


def image_id(engine: docker.DockerClient, reference: str) -> str | None:
    """The ID of the image `reference` names in the engine, or None."""
    try:
        return engine.api.inspect_image(reference)["Id"]
    except docker.errors.ImageNotFound:
        return None
