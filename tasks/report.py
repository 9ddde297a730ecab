"""Report to the gateway (nodes `report:<EventType>:<uuid>` and `report:apps-states:<uuid>`).

A report node's effect is "the report is durably queued in the outbox"; delivery is the
outbox's job, in the background while the update goes on (and once more, waited for, at the end
of the command). So a gateway that is down never fails nor delays an update, and a node re-run
after a crash queues nothing twice: the id was fixed when the plan was made.

Each attempt at a plan is a new update for the gateway (fioup opens one per attempt): the
event id is the planned one under attempt 1 and one derived from it and the attempt's number
after, and the correlation id is the attempt's. So after a failed run every event node is not
done any more under the next attempt, and the gateway hears that attempt from its start.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Callable

from fioup_flow.events import make_event
from fioup_flow.outbox import EVENTS, Outbox, Sender, StateReport
from fioup_flow.task import Node, TaskContext

if TYPE_CHECKING:
    from fioup_flow.checkpoint import Attempt

EVENT_KIND = "report"
APPS_STATES_KIND = "apps-states"
ATTEMPT_NS = uuid.UUID("3d0b3b7e-7c1e-4b55-9d43-2f1f0e6f5a21")

LiveDetails = Callable[[str], dict[str, Any]]
Attempts = Callable[[str], "Attempt"]  # plan id -> its current attempt (the checkpoint store knows)


def event_node(event_type: str, event_id: str, correlation_id: str, target: str, version: int,
               success: bool | None = None, details: dict[str, Any] | None = None) -> Node:
    """`correlation_id` is the plan's id: the correlation id of its first attempt, and the key of
    its attempts in the checkpoint store."""
    return Node(id=f"report:{event_type}:{event_id}", kind=EVENT_KIND, params={
        "event": event_type, "event_id": event_id, "correlation_id": correlation_id, "target": target,
        "version": version, "success": success, "details": details or {},
    })


def apps_states_node(report_id: str) -> Node:
    return Node(id=f"report:apps-states:{report_id}", kind=APPS_STATES_KIND, params={"report_id": report_id})


def attempt_event_id(planned_id: str, attempt: int) -> str:
    """The id of a planned event under `attempt`: the planned id first, then one derived from it."""
    return planned_id if attempt == 1 else str(uuid.uuid5(ATTEMPT_NS, f"{planned_id}:{attempt}"))


def send_states(outbox: Outbox, gateway: Sender, reports: list[StateReport]) -> None:
    """Queue each report of what the device is that changed, and deliver in the background."""
    for state in reports:
        outbox.put_state(state)
    outbox.flush_soon(gateway)


class ReportEvent:
    kind = EVENT_KIND

    def __init__(self, outbox: Outbox, gateway: Sender, attempts: Attempts, live_details: LiveDetails | None = None):
        self.outbox = outbox
        self.gateway = gateway
        self.attempts = attempts
        self.live_details = live_details

    def _event_id(self, node: Node) -> tuple[str, Attempt]:
        attempt = self.attempts(node.params["correlation_id"])
        return attempt_event_id(node.params["event_id"], attempt.number), attempt

    def is_done(self, node: Node) -> bool:
        return self.outbox.known(self._event_id(node)[0])

    def run(self, node: Node, ctx: TaskContext) -> None:
        p = node.params
        event_id, attempt = self._event_id(node)
        details = dict(p["details"])
        if self.live_details:
            details.update(self.live_details(p["event"]))
        event = make_event(event_id, p["event"], attempt.correlation_id, p["target"], p["version"],
                           p["success"], details)
        self.outbox.put(event_id, EVENTS, event)
        self.outbox.flush_soon(self.gateway)


class ReportAppsStates:
    """The apps-states report at the end of an update: done when the gateway holds (or will be sent)
    the apps' states as they are now, which is what the engine and the outbox say."""

    kind = APPS_STATES_KIND

    def __init__(self, outbox: Outbox, gateway: Sender, apps_states: Callable[[], StateReport]):
        self.outbox = outbox
        self.gateway = gateway
        self.apps_states = apps_states

    def is_done(self, node: Node) -> bool:
        return self.outbox.up_to_date(self.apps_states())

    def run(self, node: Node, ctx: TaskContext) -> None:
        send_states(self.outbox, self.gateway, [self.apps_states()])
