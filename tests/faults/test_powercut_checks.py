"""The power-cut harness's own judgements, fed a wrong world: each check must be able to fail.

Invariant 1 judges the engine's running containers against the image IDs the Target pins (read
from the registry's storage) and the sample app's page; invariant 3 the gateway's records against
the frozen plan's event ids and order; a cut that hit no running update is reported apart; a
boundary the update never reached fails the cut. Invariant 5: an app that runs before and after
an update may stay stopped after boot about as long as an uninterrupted run kept it stopped, not
longer, give or take an engine restart that freed a port Docker leaked."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "lib"))
import powercut  # noqa: E402
from judge import (  # noqa: E402
    EventVerdict,
    Expected,
    Running,
    judge_events,
    judge_failed_events,
    pinned_images,
    world_problems,
)
from private_engine import PrivateEngine  # noqa: E402

from fioup_flow.factory.home import FactoryHome  # noqa: E402
from fioup_flow.graph import Plan  # noqa: E402
from tasks.report import apps_states_node, event_node  # noqa: E402

BOOT = 1000.0


def cut_with(stopped: dict[str, float]) -> powercut.Cut:
    return powercut.Cut(seed=1, scenario="change", mode="random", at=1.0, stopped=stopped)


def test_an_app_down_at_boot_counts_as_stopped_from_boot_until_its_containers_last_start() -> None:
    seen = {"shellhttpd": {"start": [BOOT + 0.4, BOOT + 1.2], "die": []}, "pair": {"start": [], "die": []}}
    assert powercut.stopped_windows(seen, BOOT, down={"shellhttpd"}) == pytest.approx(
        {"shellhttpd": 1.2, "pair": 0.0})


def test_an_app_stopped_after_boot_counts_from_its_first_death_and_one_never_restarted_forever() -> None:
    seen = {"shellhttpd": {"start": [BOOT + 3.0], "die": [BOOT + 2.0, BOOT + 2.5]},
            "pair": {"start": [], "die": [BOOT + 1.0]}}
    assert powercut.stopped_windows(seen, BOOT, down=set()) == pytest.approx(
        {"shellhttpd": 1.0, "pair": float("inf")})


def test_a_stop_within_the_uninterrupted_window_and_its_slack_passes_and_a_longer_one_fails() -> None:
    baseline = powercut.Baseline(seconds=5.0, stopped={"shellhttpd": 0.8, "pair": 0.0})
    factor, margin = powercut.WINDOW_SLACK
    within = cut_with({"shellhttpd": 0.8 * factor + margin, "pair": 0.0, "ticker": 9.0})  # ticker: new, exempt
    powercut.check_stopped(within, baseline)
    assert within.converged
    late = cut_with({"shellhttpd": 0.8 * factor + margin + 0.1, "pair": 0.0})
    powercut.check_stopped(late, baseline)
    assert "shellhttpd stopped" in late.failures["5-stopped"]



def test_an_engine_restart_that_freed_a_leaked_port_adds_its_own_time_to_the_allowance() -> None:
    baseline = powercut.Baseline(seconds=5.0, stopped={"shellhttpd": 0.8})
    factor, margin = powercut.WINDOW_SLACK
    allowed = 0.8 * factor + margin + 2.5
    within = cut_with({"shellhttpd": allowed - 0.1})
    within.engine_restarts = [2.5]
    powercut.check_stopped(within, baseline)
    assert within.converged
    late = cut_with({"shellhttpd": allowed + 0.1})
    late.engine_restarts = [2.5]
    powercut.check_stopped(late, baseline)
    assert "+2.5 s of engine restart" in late.failures["5-stopped"]


def test_an_engine_restart_is_timed_from_the_refused_start_to_the_engine_answering_again(tmp_path) -> None:
    engine = PrivateEngine(tmp_path)
    engine.log.write_text('time="2026-11-27T08:30:20.0Z" level=info msg="API listen on /x/docker.sock"\n')
    since = engine.log_size()
    with engine.log.open("a") as log:
        log.write('time="2026-11-27T08:30:26.977820353Z" level=warning msg="Failed to allocate and map port '
                  '54369-54369: Bind for 127.0.0.1:54369 failed: port is already allocated"\n'
                  'time="2026-11-27T08:30:27.206113792Z" level=info msg="Processing signal \'terminated\'"\n'
                  'time="2026-11-27T08:30:29.636125608Z" level=info msg="API listen on /x/docker.sock"\n')
    assert engine.restarts_since(since) == pytest.approx([29.636126 - 26.977820])
    assert engine.restarts_since(engine.log_size()) == []


# --- invariant 1: the world runs the Target --------------------------------------------------------

V2 = Expected(2, {"shellhttpd": {"web": "sha256:new-web"}, "pair": {"producer": "sha256:p", "consumer": "sha256:c"}},
              "<h1>shellhttpd v2</h1>")
RIGHT = [Running("shellhttpd", "web", "sha256:new-web", "shellhttpd-web-1"),
         Running("pair", "producer", "sha256:p", "pair-producer-1"), Running("pair", "consumer", "sha256:c", "pair-consumer-1")]


def serves(page: str):
    return lambda: page


def test_the_world_that_runs_the_target_passes() -> None:
    assert world_problems(V2, RIGHT, serves("<h1>shellhttpd v2</h1>\n")) == []


def test_an_old_container_still_up_after_the_commit_fails_even_beside_the_new_one() -> None:
    old = Running("shellhttpd", "web", "sha256:old-web", "shellhttpd-web-old")
    assert world_problems(V2, RIGHT + [old], serves("<h1>shellhttpd v2</h1>")) == [
        "shellhttpd/web: shellhttpd-web-old runs image sha256:old-web, not the Target's"]
    only_old = [old, *RIGHT[1:]]
    assert "shellhttpd/web: no running container with image sha256:new-web" in world_problems(
        V2, only_old, serves("<h1>shellhttpd v2</h1>"))


def test_a_dropped_app_that_still_runs_and_a_page_of_another_version_fail() -> None:
    ticker = Running("ticker", "ticker", "sha256:t", "ticker-ticker-1")
    problems = world_problems(V2, RIGHT + [ticker], serves("<h1>shellhttpd v1</h1>"))
    assert "dropped app ticker still runs (ticker-ticker-1)" in problems
    assert any("serves '<h1>shellhttpd v1</h1>'" in p for p in problems)


def test_a_sample_app_that_does_not_answer_fails() -> None:
    def refused() -> str:
        raise ConnectionRefusedError()
    assert world_problems(V2, RIGHT, refused) == [
        "the sample app serves 'no answer: ConnectionRefusedError', not '<h1>shellhttpd v2</h1>'"]


def test_the_pinned_image_ids_are_read_from_the_registrys_own_storage(tmp_path) -> None:
    home = FactoryHome(tmp_path)

    def store(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        folder = home.registry_data / "docker/registry/v2/blobs/sha256" / digest[:2] / digest
        folder.mkdir(parents=True)
        (folder / "data").write_bytes(data)
        return f"sha256:{digest}"

    config = store(b'{"config": {}}')
    image = store(json.dumps({"config": {"digest": config}, "layers": []}).encode())
    index = store(json.dumps({"manifests": [{"digest": image, "platform": {"os": "linux", "architecture": "amd64"}}]}).encode())
    compose = yaml.safe_dump({"services": {"web": {"image": f"hub/web@{index}"}}}).encode()
    bundle = io.BytesIO()
    with tarfile.open(fileobj=bundle, mode="w") as tar:
        member = tarfile.TarInfo("./docker-compose.yml")
        member.size = len(compose)
        tar.addfile(member, io.BytesIO(compose))
    app = store(json.dumps({"layers": [{"digest": store(gzip.compress(bundle.getvalue()))}]}).encode())
    assert pinned_images(home, f"hub/app@{app}", "amd64") == {"web": config}


# --- invariant 3: the gateway holds exactly the plan's events --------------------------------------

TYPES = ["UpdateInitStarted", "UpdateInitCompleted", "EcuDownloadStarted", "EcuDownloadCompleted"]


def a_plan() -> Plan:
    plan = Plan(meta={"target": "t-2", "version": 2})
    previous: list[str] = []
    for n, kind in enumerate(TYPES):
        previous = [plan.add(event_node(kind, f"e{n}", plan.plan_id, "t-2", 2), previous).id]
    plan.add(apps_states_node("r1"), previous)
    return plan


def record(event_id: str, kind: str, correlation: str, success: bool | None = None) -> dict:
    return {"id": event_id, "eventType": {"id": kind, "version": 2},
            "event": {"correlationId": correlation, "success": success}}


def sent(plan: Plan, order: list[int]) -> list[dict]:
    return [record(f"e{n}", TYPES[n], plan.plan_id) for n in order]


def test_exactly_the_plans_events_in_order_pass_and_resends_are_counted_from_the_deliveries() -> None:
    plan = a_plan()
    deliveries = [{"ids": ["e0"], "new": 1}, {"ids": ["e0", "e1"], "new": 1}, {"ids": ["e2", "e3"], "new": 2}]
    meta = record("m", "MetadataUpdateCompleted", "meta-1")  # the TUF refresh's own event: not the plan's
    verdict = judge_events(plan, [meta, *sent(plan, [0, 1, 2, 3])], deliveries)
    assert verdict == EventVerdict(problems=[], records=4, resends=1, lost=0, duplicated=0)


def test_a_second_record_of_an_event_fails() -> None:
    plan = a_plan()
    verdict = judge_events(plan, sent(plan, [0, 1, 1, 2, 3]), [])
    assert verdict.duplicated == 1 and verdict.problems[0] == "recorded twice: e1 x2"


def test_an_event_sent_again_under_a_new_id_is_a_second_record_and_fails() -> None:
    plan = a_plan()
    again = sent(plan, [0, 1, 2, 3]) + [record("e3-again", "EcuDownloadCompleted", plan.plan_id)]
    assert judge_events(plan, again, []).problems


def test_a_lost_event_an_event_out_of_order_or_one_of_another_plan_fails() -> None:
    plan = a_plan()
    assert judge_events(plan, sent(plan, [0, 1, 3]), []).lost == 1
    assert judge_events(plan, sent(plan, [0, 2, 1, 3]), []).problems
    stranger = sent(plan, [0, 1, 2, 3]) + [record("x", "EcuInstallationStarted", "another-plan")]
    assert judge_events(plan, stranger, []).problems


def test_after_a_failed_attempt_the_remaining_events_may_come_under_a_new_correlation_id() -> None:
    plan = a_plan()
    records = [*sent(plan, [0, 1, 2]), record("f", "EcuDownloadCompleted", plan.plan_id, success=False),
               record("n3", "EcuDownloadCompleted", "attempt-2", success=True)]
    assert judge_events(plan, records, []).problems == []
    lost = records[:-1]
    assert judge_events(plan, lost, []).problems == ["never recorded, under any attempt: ['EcuDownloadCompleted']"]


def test_a_failed_update_passes_with_its_plans_events_up_to_the_failure_then_its_failure_and_nothing_else() -> None:
    plan = a_plan()
    failure = record("f", "EcuInstallationCompleted", plan.plan_id, success=False)
    assert judge_failed_events(plan, [*sent(plan, [0, 1]), failure], []).problems == []
    assert judge_failed_events(plan, sent(plan, [0, 1]), []).problems, "no report of the failure"
    succeeded = record("f", "EcuInstallationCompleted", plan.plan_id, success=True)
    assert judge_failed_events(plan, [*sent(plan, [0, 1]), succeeded], []).problems, "a failure reported as a success"
    assert judge_failed_events(plan, [*sent(plan, [0, 2]), failure], []).problems, "an event skipped"
    assert judge_failed_events(plan, [*sent(plan, [0, 1, 1]), failure], []).duplicated == 1


# --- what a cut hit, and a boundary never reached --------------------------------------------------


def a_cut(**changes) -> powercut.Cut:
    cut = powercut.Cut(seed=1, scenario="change", mode="random", at=1.0)
    for name, value in changes.items():
        setattr(cut, name, value)
    return cut


def test_a_cut_after_the_update_ended_hit_nothing_and_is_reported_apart_not_counted() -> None:
    assert powercut.what_was_hit(a_cut(running=False), plans=None) == powercut.NOTHING
    cuts = [a_cut(hit="mid-update"), a_cut(hit=powercut.NOTHING), a_cut(hit=powercut.NOTHING, failures={"boot": "x"})]
    lines = powercut.summary(cuts)
    assert lines[-1] == "converged 1/1"
    assert "cuts that hit nothing (the update had ended; not counted below): 2, converged 1/2" in lines


PROGRESS = """
import sys
print("Updating to t-2 (version 2): 5 nodes", file=sys.stderr)
print("done    [1/5] report:UpdateInitStarted:1a2b3c4d…", file=sys.stderr)
print("done    [2/5] report:UpdateInitCompleted:5e6f7a8b…", file=sys.stderr)
"""


def progress(tmp_path: Path) -> powercut.Update:
    return powercut.Update(subprocess.Popen([sys.executable, "-c", PROGRESS], stderr=subprocess.PIPE, text=True))


def test_a_boundary_cut_waits_for_that_many_nodes_done_from_the_progress_lines(tmp_path) -> None:
    cut = a_cut(mode="boundary", at=6.0)  # counted round: boundary 6 of 5 nodes is boundary 1
    powercut.wait_for_the_moment(cut, progress(tmp_path))
    assert (cut.at, cut.boundaries, cut.node, cut.failures) == (1.0, 5, "report:UpdateInitCompleted:5e6f7a8b…", {})


def test_a_boundary_the_update_never_reached_fails_the_cut() -> None:
    cut = a_cut(mode="boundary", at=3.0)
    powercut.wait_for_the_moment(cut, progress(Path()))
    assert cut.failures["harness"] == "boundary 3 never reached: the update ended after 2 of 5 nodes"


# --- a network trip counts only if its fault fired ---------------------------------------------


def test_a_network_trip_whose_fault_never_fired_tested_nothing_and_is_not_counted() -> None:
    before = {"resets": 2, "stalls": 0, "closed_on_accept": 0, "rate_waits": 0, "server_errors_left": 0}
    assert powercut.fired({"reset_after": 3_000_000}, before, dict(before)) == 0
    assert powercut.fired({"reset_after": 3_000_000}, before, dict(before, resets=5)) == 3
    assert powercut.fired({"reset_probability": 0.005, "rate": 4_000_000}, before, dict(before, resets=3)) == 0, \
        "each knob of a fault must fire: the rate alone is not the fault"
    assert powercut.fired({"server_errors": 3}, dict(before, server_errors_left=3), before) == 3
    trips = [powercut.Trip("change", {"stall_after": 1}, fired=1), powercut.Trip("change", {"stall_after": 1})]
    lines = powercut.network_summary(trips)
    assert lines[-1] == "converged 1/1"
    assert "trips whose fault never fired (they tested nothing; not counted below): 1, converged 1/1" in lines
