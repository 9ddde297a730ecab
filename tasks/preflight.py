"""Before an update touches anything: can this Docker engine and this compose run it?

A command that changes what runs (`apply`, `resume`) checks, once, at its start:
- the engine answers (else EngineUnavailableError, exit 7, naming its address);
- it keeps images in a classic graph-driver store, where an image's ID is the digest of its
  config: every install and start check compares image IDs with the config digests of the
  Target's images. Docker's containerd image store (daemon.json `"containerd-snapshotter":
  true`) names images by their manifest digest instead, so nothing would ever be found
  installed; it is refused (EngineUnsupportedError, exit 8), as read from `docker info`
  (DriverStatus `driver-type: io.containerd.snapshotter.v1`, the test composeapp makes too). fioup goes further and requires overlay2 (its `fioup.service` runs
  `docker info --format {{.Driver}}` before it starts); any classic driver works for
  fioup-flow, so another one only gets a warning;
- a Compose v2 recent enough for the flags fioup-flow uses (`Compose.binary`, exit 8).

The result is kept by the caller for the life of the command: one `docker info`, one
`compose version` per command (more only where a stray compose v1 is passed over).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import docker

from fioup_flow.errors import EngineUnsupportedError
from tasks.appstate import UNANSWERED, engine_address, unavailable
from tasks.compose import Compose, ComposeBinary

log = logging.getLogger(__name__)

CONTAINERD_STORE = "io.containerd.snapshotter.v1"
FIOUP_DRIVER = "overlay2"


@dataclass(frozen=True)
class EngineReport:
    """What the checks found: the engine's address, version and storage driver, and the compose chosen."""

    address: str
    version: str
    driver: str
    compose: ComposeBinary


def check(engine: docker.DockerClient, compose: Compose) -> EngineReport:
    """Run the checks above; raise EngineUnavailableError (7) or EngineUnsupportedError (8)."""
    try:
        info = engine.info()
    except UNANSWERED as exc:
        raise unavailable(exc) from exc
    driver = str(info.get("Driver", ""))
    status = dict(tuple(pair) for pair in info.get("DriverStatus") or [] if len(pair) == 2)
    if CONTAINERD_STORE in status.values():
        raise EngineUnsupportedError(
            f"the Docker engine at {engine_address()} keeps images in containerd's image store "
            f"(storage driver {driver}, {CONTAINERD_STORE}), where an image's ID is its manifest digest; "
            f"fioup-flow identifies every image by its config digest, as the classic store does. Run the "
            f"engine with the {FIOUP_DRIVER} storage driver (daemon.json: \"features\": "
            f"{{\"containerd-snapshotter\": false}}, \"storage-driver\": \"{FIOUP_DRIVER}\")")
    if driver != FIOUP_DRIVER:
        log.warning("the Docker engine at %s uses the %s storage driver; fioup requires %s (fioup-flow works "
                    "with any classic driver)", engine_address(), driver or "(unknown)", FIOUP_DRIVER)
    return EngineReport(engine_address(), str(info.get("ServerVersion", "")), driver, compose.binary)
