"""Power cuts (SIGKILL) at every node boundary and at random points, and a clean SIGTERM stop.

Every case ends the same way: after resuming, every node's effect is present exactly as
specified, the run log proves no node recorded done before the kill ran again, and the final
state equals that of an uninterrupted run.
"""

from __future__ import annotations

import random
import signal
import time

import pytest

from tests.engine.conftest import Device, diamond_plan
from tests.engine.kinds import KILL_ENV

NODES = [f"write:{n}" for n in "abcdefghi"]


def uninterrupted(device_root) -> tuple[dict[str, str], list[str]]:
    reference = Device(device_root)
    code, result, err = reference.run(diamond_plan())
    assert code == 0, err
    return reference.outputs(), sorted(reference.runs())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict[str, str], list[str]]:
    return uninterrupted(tmp_path_factory.mktemp("reference"))


def done_in_store(device: Device, plan_id: str) -> set[str]:
    with device.store() as store:
        return {n for n, r in store.records(plan_id, NODES).items() if r.state == "done"}


def resume_and_check(device: Device, plan_id: str, done_before: set[str], reference, plan=None) -> None:
    """Resume (or, if the kill came before the plan was frozen, start again) and check the invariants."""
    runs_before = device.runs()
    code, result, err = device.run(plan)
    assert code == 0, err
    assert result["outcome"] == "completed"
    assert not done_before & set(result["ran"]), "a node recorded done before the kill ran again"
    assert not done_before & set(device.runs()[len(runs_before):])
    outputs, reference_runs = reference
    assert device.outputs() == outputs
    assert set(device.runs()) == set(reference_runs)
    with device.store() as store:
        assert store.current_plan_id() is None
        assert store.history(1)[0]["plan_id"] == plan_id
        assert store.history(1)[0]["counts"]["done"] == len(NODES)


@pytest.mark.parametrize("phase", ["begin", "logged", "effect"])
def test_a_kill_at_every_node_boundary_resumes_to_the_uninterrupted_result(tmp_path, phase, reference):
    for i, node_id in enumerate(NODES):
        device = Device(tmp_path / f"{i}")
        plan = diamond_plan()
        code, _, _ = device.run(plan, env={KILL_ENV: f"{node_id}@{phase}"})
        assert code == -signal.SIGKILL
        done_before = done_in_store(device, plan.plan_id)
        assert node_id not in done_before
        resume_and_check(device, plan.plan_id, done_before, reference)
        # a node killed before its effect was durable runs again; one killed after it does not
        expected_runs = 2 if phase == "logged" else 1
        assert device.runs().count(node_id) == expected_runs
        assert all(device.runs().count(n) == 1 for n in NODES if n != node_id)


def test_kills_at_random_points_inside_nodes_resume_to_the_uninterrupted_result(tmp_path, reference):
    rng = random.Random(3)
    resumed = 0
    for i in range(6):
        device = Device(tmp_path / f"{i}")
        plan = diamond_plan(sleep=0.03)
        proc = device.runner(plan)
        time.sleep(0.25 + rng.uniform(0, 0.35))  # process start-up is ~0.2 s, the plan ~0.3 s
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        frozen = False
        if device.store_dir.exists():
            with device.store() as store:
                if store.history():
                    continue  # the kill came after the run completed: nothing to resume
                frozen = store.current_plan_id() == plan.plan_id
        done_before = done_in_store(device, plan.plan_id) if frozen else set()
        resume_and_check(device, plan.plan_id, done_before, reference, plan=None if frozen else plan)
        assert all(1 <= device.runs().count(n) <= 2 for n in NODES)
        resumed += 1
    assert resumed >= 3, "most kills should land mid-plan"


def test_sigterm_stops_cleanly_at_a_node_boundary_and_resume_finishes(device, reference):
    plan = diamond_plan(sleep=0.3, slow="a")
    proc = device.runner(plan)
    while "write:a" not in device.runs():
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert '"outcome": "interrupted"' in out
    assert device.runs() == ["write:a"]  # the running node finished, nothing new started
    done_before = done_in_store(device, plan.plan_id)
    assert done_before == {"write:a"}
    resume_and_check(device, plan.plan_id, done_before, reference)


def test_a_second_signal_abandons_the_running_node_and_resume_re_checks_and_reruns_it(device, reference):
    plan = diamond_plan(sleep=1.0, slow="a")
    proc = device.runner(plan)
    while "write:a" not in device.runs():
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGINT  # killed at once, mid-node
    with device.store() as store:
        assert store.record(plan.plan_id, "write:a").state == "running"
    resume_and_check(device, plan.plan_id, set(), reference)
    assert device.runs().count("write:a") == 2
