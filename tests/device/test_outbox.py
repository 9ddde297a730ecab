"""Reports leave the outbox only once the gateway accepted them, in order, each id once."""

from pathlib import Path

from fioup_flow.events import DETAILS_MAX, make_event
from fioup_flow.outbox import EVENTS, Outbox


class StandInGateway:
    """A fake gateway (the real one is exercised by the update tests): records posts, can refuse."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, object]] = []
        self.down = False

    def post_json(self, path: str, payload: object) -> None:
        if self.down:
            raise ConnectionError("gateway down")
        self.posts.append((path, payload))


def test_a_report_queued_twice_is_queued_once(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.put("e1", EVENTS, {"id": "e1"})
    outbox.put("e1", EVENTS, {"id": "e1", "again": True})
    assert [i.payload for i in outbox.pending()] == [{"id": "e1"}]


def test_nothing_is_dropped_while_the_gateway_is_down(tmp_path: Path) -> None:
    outbox, gateway = Outbox(tmp_path), StandInGateway()
    gateway.down = True
    outbox.put("e1", EVENTS, {"id": "e1"})
    assert outbox.flush(gateway) == 1 and outbox.known("e1") and not outbox.delivered("e1")
    gateway.down = False
    assert outbox.flush(gateway) == 0 and outbox.delivered("e1")
    assert gateway.posts == [("events", [{"id": "e1"}])]


def test_events_go_in_batches_in_order_and_other_reports_alone(tmp_path: Path) -> None:
    outbox, gateway = Outbox(tmp_path), StandInGateway()
    outbox.put("e1", EVENTS, {"id": "e1"})
    outbox.put("e2", EVENTS, {"id": "e2"})
    outbox.put("s1", "apps-states", {"apps": {}})
    outbox.put("e3", EVENTS, {"id": "e3"})
    outbox.flush(gateway)
    assert gateway.posts == [("events", [{"id": "e1"}, {"id": "e2"}]), ("apps-states", {"apps": {}}),
                             ("events", [{"id": "e3"}])]


def test_the_outbox_survives_a_restart(tmp_path: Path) -> None:
    Outbox(tmp_path).put("e1", EVENTS, {"id": "e1"})
    assert [i.item_id for i in Outbox(tmp_path).pending()] == ["e1"]


def test_an_event_has_fioups_wire_format_with_details_capped() -> None:
    event = make_event("id-1", "EcuDownloadStarted", "plan-1", "amd64-linux-lmp-2", 2, True, {"x": "y" * 5000})
    assert event["eventType"] == {"id": "EcuDownloadStarted", "version": 2}
    assert event["event"]["success"] is None  # "Started" events carry no success, as in fioup
    assert event["event"]["version"] == "2" and len(event["event"]["details"]) == DETAILS_MAX
    assert event["event"]["details"].endswith("...[TRUNCATED]")
