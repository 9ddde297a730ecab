"""Reports leave the outbox only once the gateway accepted them (or refused them for good), in
order, each id once, and the outbox stays bounded however long the device lives."""

import threading
import time
from pathlib import Path

import pytest

from fioup_flow.durable import open_cache
from fioup_flow.events import DETAILS_MAX, make_event
from fioup_flow.gateway import GatewayError
from fioup_flow.outbox import BATCH_BYTES, EVENTS, KEEP_FINISHED, KEEP_REJECTED, Outbox, StateReport, fingerprint


class StandInGateway:
    """A fake gateway (the real one is exercised by tests/update/test_reports.py): records what it
    accepts, can be down, and refuses with `refuse_status` any request that carries an id of `bad`."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, object]] = []
        self.calls = 0
        self.down = False
        self.bad: set[str] = set()
        self.refuse_status = 400

    def send(self, method: str, path: str, payload: object) -> None:
        self.calls += 1
        if self.down:
            raise GatewayError("gateway down")
        ids = {p.get("id") for p in (payload if isinstance(payload, list) else [payload])}
        if ids & self.bad:
            raise GatewayError(f"{method} {path}: the gateway answered {self.refuse_status}", self.refuse_status)
        self.posts.append((path, payload))


def ids_sent(gateway: StandInGateway) -> list[str]:
    return [p["id"] for _, payload in gateway.posts for p in (payload if isinstance(payload, list) else [payload])]


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
    outbox.put("s1", "apps-states", {"id": "s1", "apps": {}})
    outbox.put("e3", EVENTS, {"id": "e3"})
    outbox.flush(gateway)
    assert gateway.posts == [("events", [{"id": "e1"}, {"id": "e2"}]), ("apps-states", {"id": "s1", "apps": {}}),
                             ("events", [{"id": "e3"}])]


def test_a_batch_stays_under_the_gateway_s_body_limit(tmp_path: Path) -> None:
    outbox, gateway = Outbox(tmp_path), StandInGateway()
    big = {"x": "y" * 5000}  # details are capped at 2 KiB: 50 such events would be ~120 KiB
    for n in range(50):
        outbox.put(f"e{n}", EVENTS, make_event(f"e{n}", "EcuDownloadStarted", "c", "t", 1, None, big))
    assert outbox.flush(gateway) == 0
    assert len(gateway.posts) > 1 and all(len(str(p)) < BATCH_BYTES * 1.1 for _, p in gateway.posts)
    assert ids_sent(gateway) == [f"e{n}" for n in range(50)]


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_a_report_the_gateway_refuses_for_good_is_set_aside_and_the_rest_goes_on(tmp_path: Path, status) -> None:
    outbox, gateway = Outbox(tmp_path), StandInGateway()
    gateway.bad, gateway.refuse_status = {"e3"}, status
    for n in range(1, 7):
        outbox.put(f"e{n}", EVENTS, {"id": f"e{n}"})
    outbox.put("s1", "apps-states", {"id": "s1"})
    assert outbox.flush(gateway) == 0
    assert ids_sent(gateway) == ["e1", "e2", "e4", "e5", "e6", "s1"], "in order, the refused one alone left out"
    ((aside,),) = [outbox.rejected()]
    assert aside["id"] == "e3" and aside["status"] == status and str(status) in aside["reason"]
    assert aside["payload"] == {"id": "e3"}
    assert outbox.known("e3") and not outbox.delivered("e3"), "queueing it again does nothing"
    outbox.put("e3", EVENTS, {"id": "e3"})
    assert outbox.pending() == []
    assert Outbox(tmp_path).rejected() == [aside], "set aside durably"


@pytest.mark.parametrize("status", [408, 429, 503])
def test_a_refusal_that_means_later_keeps_everything_pending_in_order(tmp_path: Path, status) -> None:
    outbox, gateway = Outbox(tmp_path), StandInGateway()
    gateway.bad, gateway.refuse_status = {"e1"}, status
    outbox.put("e1", EVENTS, {"id": "e1"})
    outbox.put("e2", EVENTS, {"id": "e2"})
    assert outbox.flush(gateway) == 2 and gateway.calls == 1, "no halving, no second try in this flush"
    assert outbox.rejected() == []
    gateway.bad = set()
    assert outbox.flush(gateway) == 0 and ids_sent(gateway) == ["e1", "e2"]


def test_set_aside_reports_are_bounded(tmp_path: Path) -> None:
    outbox, gateway = Outbox(tmp_path), StandInGateway()
    gateway.bad = {f"e{n}" for n in range(KEEP_REJECTED + 10)}
    for n in range(KEEP_REJECTED + 10):
        outbox.put(f"e{n}", EVENTS, {"id": f"e{n}"})
    outbox.flush(gateway)
    assert [r["id"] for r in outbox.rejected()] == [f"e{n}" for n in range(10, KEEP_REJECTED + 10)]
    assert sum(1 for k in outbox.cache.iterkeys() if k.startswith("rejected:")) == KEEP_REJECTED


def test_the_outbox_stays_bounded_and_still_deduplicates_what_the_update_in_progress_can_queue_again(
        tmp_path: Path) -> None:
    outbox, gateway = Outbox(tmp_path), StandInGateway()
    updates = 3 * KEEP_FINISHED // 10
    for update in range(updates):  # years of updates, ten reports each, all delivered
        for n in range(10):
            outbox.put(f"u{update}-{n}", EVENTS, {"id": f"u{update}-{n}"})
        outbox.flush(gateway)
    keys = [k for k in outbox.cache.iterkeys()]
    assert len(keys) < KEEP_FINISHED * 2 + 20, f"{len(keys)} keys after {updates * 10} reports"
    last = [f"u{updates - 1}-{n}" for n in range(10)]
    for item_id in last:  # a crash before the last update's nodes were recorded done re-queues them
        outbox.put(item_id, EVENTS, {"id": item_id})
    assert outbox.pending() == [], "the update in progress queues nothing twice"
    assert not outbox.known("u0-0"), "long finished updates are forgotten"


def test_pending_reads_the_queue_not_every_key(tmp_path: Path, monkeypatch) -> None:
    outbox, gateway = Outbox(tmp_path), StandInGateway()
    for n in range(100):
        outbox.put(f"e{n}", EVENTS, {"id": f"e{n}"})
    outbox.flush(gateway)
    outbox.put("last", EVENTS, {"id": "last"})
    monkeypatch.setattr(outbox.cache, "iterkeys", lambda *a, **k: pytest.fail("pending() scanned the store"))
    assert [i.item_id for i in outbox.pending()] == ["last"]


def test_a_report_node_does_not_wait_for_the_gateway_the_end_of_the_command_does(tmp_path: Path) -> None:
    outbox, gateway = Outbox(tmp_path), StandInGateway()
    slow = threading.Event()
    send = gateway.send
    gateway.send = lambda *args: (slow.wait(5), send(*args))  # a gateway that takes its time
    start = time.monotonic()
    for n in range(3):
        outbox.put(f"e{n}", EVENTS, {"id": f"e{n}"})
        outbox.flush_soon(gateway)
    assert time.monotonic() - start < 1 and gateway.posts == []
    slow.set()
    outbox.settle()
    assert outbox.flush(gateway) == 0 and ids_sent(gateway) == ["e0", "e1", "e2"]


def test_the_outbox_survives_a_restart(tmp_path: Path) -> None:
    Outbox(tmp_path).put("e1", EVENTS, {"id": "e1"})
    assert [i.item_id for i in Outbox(tmp_path).pending()] == ["e1"]


def test_an_outbox_of_the_first_layout_is_taken_over_without_losing_a_report(tmp_path: Path) -> None:
    cache = open_cache(tmp_path)  # as fioup-flow wrote it before: a state key per item, no head
    for seq, item_id in enumerate(["old1", "old2", "wait1", "wait2"], 1):
        cache.set("seq", seq)
        cache.set(f"state:{item_id}", "sent" if item_id.startswith("old") else "pending")
        if item_id.startswith("wait"):
            cache.set(f"pending:{seq:020d}", {"id": item_id, "endpoint": EVENTS, "payload": {"id": item_id}})
    cache.close()
    outbox, gateway = Outbox(tmp_path), StandInGateway()
    assert outbox.known("old1") and [i.item_id for i in outbox.pending()] == ["wait1", "wait2"]
    assert outbox.flush(gateway) == 0 and ids_sent(gateway) == ["wait1", "wait2"]


def test_a_state_report_is_queued_only_when_it_changed(tmp_path: Path) -> None:
    outbox, gateway = Outbox(tmp_path), StandInGateway()

    def state(apps: dict) -> StateReport:
        return StateReport("apps-states", "POST", {"apps": apps}, fingerprint(apps), initial=fingerprint({}))

    assert not outbox.put_state(state({})), "no apps and nothing said yet: nothing to say"
    assert outbox.put_state(state({"a": 1}))
    assert not outbox.put_state(state({"a": 1})) and outbox.up_to_date(state({"a": 1}))
    assert outbox.put_state(state({"a": 2})) and outbox.put_state(state({}))
    outbox.flush(gateway)
    assert [payload for _, payload in gateway.posts] == [{"apps": {"a": 1}}, {"apps": {"a": 2}}, {"apps": {}}]
    assert not Outbox(tmp_path).put_state(state({})), "what was last queued is kept durably"


def test_an_event_has_fioups_wire_format_with_details_capped() -> None:
    event = make_event("id-1", "EcuDownloadStarted", "plan-1", "amd64-linux-lmp-2", 2, True, {"x": "y" * 5000})
    assert event["eventType"] == {"id": "EcuDownloadStarted", "version": 2}
    assert event["event"]["success"] is None  # "Started" events carry no success, as in fioup
    assert event["event"]["version"] == "2" and len(event["event"]["details"]) == DETAILS_MAX
    assert event["event"]["details"].endswith("...[TRUNCATED]")
