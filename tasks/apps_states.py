"""The apps-states report (`POST /apps-states`), in fioup's shape, from what the engine runs.

Unlike fioup, an app counts as healthy only if every service's container is running (and
healthy where it has a health check), or exited 0 under a restart policy that lets it stop (a
one-shot that did its job): any other exited container is not a healthy app.

fioup posts apps-states only when they changed, and counts as a change only a different number
of apps, an app's state, or its number of services (`pkg/client/app_states.go`). So an update
that swaps an app's version for one with as many services leaves the gateway showing the old
URI, and a container that was recreated or runs another image goes unnoticed. Here a change is
any difference in what is true of the apps: URI, state, and per service its container, image,
state and health. Docker's status text ("Up 3 minutes") and the device time are left out:
they change by themselves, and would make every report a change.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

import docker

from fioup_flow.outbox import StateReport, fingerprint
from fioup_flow.targets import Target
from tasks import appstate

EMPTY_OSTREE = hashlib.sha256(b"").hexdigest()
TOPIC = "apps-states"
SAME_IF = ("name", "hash", "state", "health", "image")  # what of a service counts for a change
NO_APPS = fingerprint({})  # what the gateway is taken to hold before the first report, as in fioup


def service_json(s: appstate.ServiceState) -> dict[str, Any]:
    return {"name": s.name, "hash": s.container_id[:12], "state": s.state, "status": s.status,
            "health": s.health, "image": s.image_id}


def app_state(services: list[appstate.ServiceState]) -> str:
    """running (every service up, or a one-shot that exited 0), stopped (containers, not all up) or
    missing (no container)."""
    if not services:
        return "missing"
    return "running" if all(s.up or s.finished for s in services) else "stopped"


def apps_status(engine: docker.DockerClient, current: Target | None) -> list[dict[str, Any]]:
    """Each app of the current Target with its state and services, for `status`."""
    out = []
    for app in current.apps if current else ():
        services = appstate.services(engine, app.name)
        out.append({"name": app.name, "uri": app.uri, "state": app_state(services),
                    "services": [service_json(s) for s in services]})
    return out


def apps_states_payload(engine: docker.DockerClient, current: Target | None) -> dict[str, Any]:
    """The `/apps-states` report, in fioup's shape."""
    apps = {
        app["name"]: {"uri": app["uri"], "state": "healthy" if app["state"] == "running" else "unhealthy",
                      "services": [dict(s, health=s["health"] or ("healthy" if s["state"] == "running" else "unhealthy"),
                                        logs="") for s in app["services"]]}
        for app in apps_status(engine, current)
    }
    return {"ostree": EMPTY_OSTREE, "deviceTime": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "apps": apps}


def apps_states_fingerprint(payload: dict[str, Any]) -> str:
    """What counts for a change (see the module's docstring): not the status text, not the time."""
    return fingerprint({name: {"uri": app["uri"], "state": app["state"],
                               "services": [{k: s.get(k) for k in SAME_IF} for s in app["services"]]}
                        for name, app in payload["apps"].items()})


def apps_states_report(engine: docker.DockerClient, current: Target | None) -> StateReport:
    """The apps-states report as a state report: queued only when it changed (no apps, no report)."""
    payload = apps_states_payload(engine, current)
    return StateReport(TOPIC, "POST", payload, apps_states_fingerprint(payload), initial=NO_APPS)

