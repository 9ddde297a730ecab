"""Report to the gateway (nodes `report:<EventType>:<uuid>` and `report:apps-states:<uuid>`).

A report node's effect is "the report is durably queued in the outbox"; delivery is the
outbox's job (now if the gateway answers, else at the next flush). So a gateway that is down
never fails an update, and a node re-run after a crash queues nothing twice: the id was fixed
when the plan was made.
"""

from __future__ import annotations

from typing import Any, Callable

from fioup_flow.events import make_event
from fioup_flow.outbox import EVENTS, Outbox, Poster
from fioup_flow.task import Node, TaskContext

EVENT_KIND = "report"
APPS_STATES_KIND = "apps-states"

LiveDetails = Callable[[str], dict[str, Any]]


def event_node(event_type: str, event_id: str, correlation_id: str, target: str, version: int,
               success: bool | None = None, details: dict[str, Any] | None = None) -> Node:
    return Node(id=f"report:{event_type}:{event_id}", kind=EVENT_KIND, params={
        "event": event_type, "event_id": event_id, "correlation_id": correlation_id, "target": target,
        "version": version, "success": success, "details": details or {},
    })


def apps_states_node(report_id: str) -> Node:
    return Node(id=f"report:apps-states:{report_id}", kind=APPS_STATES_KIND, params={"report_id": report_id})


class ReportEvent:
    kind = EVENT_KIND

    def __init__(self, outbox: Outbox, gateway: Poster, live_details: LiveDetails | None = None):
        self.outbox = outbox
        self.gateway = gateway
        self.live_details = live_details

    def is_done(self, node: Node) -> bool:
        return self.outbox.known(node.params["event_id"])

    def run(self, node: Node, ctx: TaskContext) -> None:
        p = node.params
        details = dict(p["details"])
        if self.live_details:
            details.update(self.live_details(p["event"]))
        event = make_event(p["event_id"], p["event"], p["correlation_id"], p["target"], p["version"],
                           p["success"], details)
        self.outbox.put(p["event_id"], EVENTS, event)
        self.outbox.flush(self.gateway)


class ReportAppsStates:
    kind = APPS_STATES_KIND

    def __init__(self, outbox: Outbox, gateway: Poster, apps_states: Callable[[], dict[str, Any]]):
        self.outbox = outbox
        self.gateway = gateway
        self.apps_states = apps_states

    def is_done(self, node: Node) -> bool:
        return self.outbox.known(node.params["report_id"])

    def run(self, node: Node, ctx: TaskContext) -> None:
        self.outbox.put(node.params["report_id"], "apps-states", self.apps_states())
        self.outbox.flush(self.gateway)
