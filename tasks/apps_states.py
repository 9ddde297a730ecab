"""The apps-states report (`POST /apps-states`), in fioup's shape, from what the engine runs.

Unlike fioup, an app counts as healthy only if every service's container is running (and
healthy where it has a health check): an exited container is not a healthy app.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

import docker

from fioup_flow.targets import Target
from tasks import appstate

EMPTY_OSTREE = hashlib.sha256(b"").hexdigest()


def apps_states_payload(engine: docker.DockerClient, current: Target | None) -> dict[str, Any]:
    apps = {}
    for app in current.apps if current else ():
        services = appstate.services(engine, app.name)
        apps[app.name] = {
            "uri": app.uri,
            "state": "healthy" if services and all(s.up for s in services) else "unhealthy",
            "services": [{"name": s.name, "hash": s.container_id[:12], "state": s.state, "status": s.status,
                          "health": s.health or ("healthy" if s.up else "unhealthy"), "image": s.image_id,
                          "logs": ""} for s in services],
        }
    return {"ostree": EMPTY_OSTREE, "deviceTime": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "apps": apps}
