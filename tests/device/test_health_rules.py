"""The rules of the health window, read from compose files and judged on the engine's descriptions of
containers: what each service must do, when a window passed, what is a crash, what the gateway hears."""

from __future__ import annotations

import json

import pytest
import yaml

from fioup_flow.composeapp import Expectation, service_expectations
from fioup_flow.errors import StartError
from fioup_flow.events import DETAILS_MAX
from fioup_flow.rollback import TRUNCATED, failure_details
from fioup_flow.task import Node
from tasks.appstate import ServiceState
from tasks.start import Watch

IMAGE = "sha256:" + "1" * 64
T0 = 1_800_000_000.0  # a moment, in epoch seconds
T0_TEXT = "2027-01-15T08:00:00.000000000Z"


def expect(compose_text: str) -> dict[str, Expectation]:
    return service_expectations(yaml.safe_load(compose_text))


def test_a_service_whose_restart_policy_lets_it_stop_is_a_one_shot() -> None:
    found = expect("""
services:
  plain: {image: x}                              # compose's default policy: no
  quoted: {image: x, restart: "no"}
  bare: {image: x, restart: no}                  # YAML 1.1 reads it as false
  retry: {image: x, restart: "on-failure:3"}
  always: {image: x, restart: always}
  kept: {image: x, restart: unless-stopped}
  swarm: {image: x, deploy: {restart_policy: {condition: any}}}
  swarm-once: {image: x, deploy: {restart_policy: {condition: none}}}
""")
    assert {name: e.may_stop for name, e in found.items()} == {
        "plain": True, "quoted": True, "bare": True, "retry": True, "always": False, "kept": False,
        "swarm": False, "swarm-once": True}


def test_a_service_others_wait_on_to_complete_is_a_one_shot_whatever_its_policy() -> None:
    found = expect("""
services:
  migrate: {image: x, restart: unless-stopped}
  cache: {image: x, restart: always}
  web:
    image: x
    restart: always
    depends_on:
      migrate: {condition: service_completed_successfully}
      cache: {condition: service_started}
  worker: {image: x, restart: always, depends_on: [cache]}
""")
    assert found["migrate"].may_stop and not found["cache"].may_stop and not found["web"].may_stop


def test_a_service_compose_does_not_create_is_known_as_such() -> None:
    found = expect("""
services:
  main: {image: x}
  debug: {image: x, profiles: [debug]}
  spare: {image: x, deploy: {replicas: 0}}
  scaled: {image: x, scale: 0}
  two: {image: x, deploy: {replicas: 2}}
""")
    assert {name: e.created for name, e in found.items()} == {
        "main": "yes", "debug": "profile", "spare": "no", "scaled": "no", "two": "yes"}


def node(window_s: float = 5.0, **services: dict) -> Node:
    return Node("healthy:app@sha256:1", "healthy", {"app": "app", "uri": "r/app@sha256:1", "timeout_s": 120,
                                                   "window_s": window_s, "services": services})


def state(name: str, status: str = "running", *, started: str = T0_TEXT, restarts: int = 0, exit_code: int = 0,
          health: str = "", container: str = "c1", policy: str = "unless-stopped") -> ServiceState:
    return ServiceState(name, container, IMAGE, status, health, "", "", exit_code, restarts, started, policy)


WEB = {"image": IMAGE, "created": "yes", "may_stop": False}
ONCE = {"image": IMAGE, "created": "yes", "may_stop": True}


def test_the_window_passes_once_every_service_ran_that_long_since_its_own_start() -> None:
    watch = Watch(node(web=WEB, db=WEB))
    assert watch.judge([state("web"), state("db", started="2027-01-15T08:00:03.5Z")], T0 + 4) == (
        [], ["web: up 4.0 of 5 s", "db: up 0.5 of 5 s"])
    assert watch.judge([state("web"), state("db", started="2027-01-15T08:00:03.5Z")], T0 + 8.6) == ([], [])


def test_a_service_not_up_yet_is_awaited_and_a_health_check_must_pass() -> None:
    watch = Watch(node(web=WEB))
    awaited, _ = watch.judge([state("web", health="starting")], T0 + 1)
    assert awaited == ["web: running (starting)"]
    assert watch.judge([], T0 + 1)[0] == ["web: no container"]


@pytest.mark.parametrize("later, words", [
    (state("web", "restarting", restarts=1, exit_code=1), "restarting"),
    (state("web", started="2027-01-15T08:00:02Z", restarts=1), "restarted (restarts 0 -> 1)"),
    (state("web", container="c2", started="2027-01-15T08:00:02Z"), "restarted"),
    (state("web", "exited", exit_code=0), "went down: exited with code 0"),
    (state("web", health="unhealthy"), "went down: running (unhealthy)"),
])
def test_a_service_seen_up_that_restarts_or_goes_down_fails_the_window(later: ServiceState, words: str) -> None:
    """A crash loop is caught however it is looked at: restarting now, or running again since."""
    watch = Watch(node(web=WEB))
    watch.judge([state("web")], T0 + 1)
    with pytest.raises(StartError, match="did not stay up through its 5 s health window") as failed:
        watch.judge([later], T0 + 2)
    assert f"web {words}" in str(failed.value)


def test_a_crash_seen_first_fails_at_once() -> None:
    with pytest.raises(StartError, match="web restarting"):
        Watch(node(web=WEB)).judge([state("web", "restarting", restarts=3, exit_code=1)], T0 + 1)
    with pytest.raises(StartError, match="web exited with code 1"):
        Watch(node(web=WEB)).judge([state("web", "exited", exit_code=1, policy="no")], T0 + 1)


def test_a_one_shot_is_fine_once_it_exited_0_even_after_being_seen_running() -> None:
    watch = Watch(node(init=ONCE, web=WEB))
    assert watch.judge([state("init"), state("web")], T0 + 1)[1] == ["init: up 1.0 of 5 s", "web: up 1.0 of 5 s"]
    assert watch.judge([state("init", "exited", policy="no"), state("web")], T0 + 6) == ([], [])
    with pytest.raises(StartError, match="init exited with code 2"):
        Watch(node(init=ONCE)).judge([state("init", "exited", exit_code=2, policy="no")], T0 + 1)


def test_a_service_compose_does_not_create_is_not_waited_for() -> None:
    watch = Watch(node(web=WEB, debug={"image": IMAGE, "created": "profile", "may_stop": False},
                       spare={"image": IMAGE, "created": "no", "may_stop": False}))
    assert watch.judge([state("web")], T0 + 6) == ([], [])
    with pytest.raises(StartError, match="debug restarting"):  # made all the same (its profile active): judged
        watch.judge([state("web"), state("debug", "restarting")], T0 + 7)


def test_a_plan_frozen_before_expectations_names_only_images_and_still_runs() -> None:
    watch = Watch(Node("healthy:app@sha256:1", "healthy", {"app": "app", "uri": "u", "timeout_s": 120,
                                                          "services": {"web": IMAGE}}))
    assert watch.judge([state("web")], T0) == ([], []), "no window: up is enough"


def crashed(name: str, restarts: int) -> ServiceState:
    return state(name, "restarting", restarts=restarts, exit_code=1)


def test_the_failure_report_carries_the_error_and_each_service_s_state() -> None:
    details = failure_details({"storage_stat": {"free": 1}}, "healthy:app: crasher restarted",
                              {"app": [crashed("crasher", 3), state("web", health="healthy")]})
    assert details == {"storage_stat": {"free": 1}, "error": "healthy:app: crasher restarted",
                       "services": {"app": {"crasher": "restarting, exit 1, 3 restarts", "web": "running (healthy)"}}}


def test_the_failure_report_fits_the_details_limit_keeping_the_error_s_tail() -> None:
    error = "start:app: " + "compose said: line\n" * 300 + "the last words that matter"
    services = {"app": [crashed(f"service-{n}", n) for n in range(100)]}
    details = failure_details({"storage_stat": {"free": 1}}, error, services)
    assert len(json.dumps(details, sort_keys=True)) <= DETAILS_MAX
    assert "services" not in details, "the services go first"
    assert details["error"].startswith("start:app: compose said") and details["error"].endswith("that matter")
    assert TRUNCATED in details["error"]
    assert details["storage_stat"] == {"free": 1}
