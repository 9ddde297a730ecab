"""The harness looks at the checkpoint store without changing the device's disk.

On the power-cut mount, every changing call that reaches the store's folder is counted by the
filesystem itself: opening a `CheckpointStore` (what the harness's observer did every 30 ms)
writes and syncs; reading through `StoreView` changes nothing, while a writer runs, once it is
gone, and after a cut, and it reads what the store holds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from faults.needs import FUSE
from faults.storeview import StoreView
from fioup_flow.checkpoint import CheckpointStore, store_path
from fioup_flow.graph import Plan
from fioup_flow.task import Node

pytestmark = [*FUSE, pytest.mark.timeout(60)]
FOLDER = "/sota/flow/checkpoint"


def a_plan() -> Plan:
    plan = Plan(meta={"target": "t", "version": 1})
    plan.add(Node("report:UpdateInitStarted:e1", "report"))
    plan.add(Node("fetch:sha256:" + "0" * 64, "fetch"), ["report:UpdateInitStarted:e1"])
    return plan


def looks(view: StoreView, plan: Plan) -> tuple:
    return (view.current_plan_id(), view.current_plan().plan_id, view.node_state(plan.plan_id, plan.order()[0]),
            view.node_state(plan.plan_id, plan.order()[1]))


WRITER = """
import sys
from fioup_flow.checkpoint import CheckpointStore, NodeRecord
from fioup_flow.graph import Plan
store = CheckpointStore(sys.argv[1])
plan = store.freeze(Plan.from_json(sys.stdin.readline()))
store.put_record(plan.plan_id, plan.order()[0], NodeRecord(state="done"))
print("frozen", flush=True)
sys.stdin.readline()  # holds the store open until told to go
store.close()
"""


def agent_holding_the_store(path: Path, plan: Plan) -> subprocess.Popen:
    """Another process (as the agent is) that freezes `plan`, marks its first node done and keeps
    the store open until its stdin is closed."""
    agent = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    agent.stdin.write(plan.to_json() + "\n")
    agent.stdin.flush()
    assert agent.stdout.readline().strip() == "frozen"
    return agent


def test_reading_through_the_store_view_changes_nothing_on_disk_and_opening_the_store_does(disk) -> None:
    path = store_path(disk.mount / "sota" / "flow")
    plan = a_plan()
    agent = agent_holding_the_store(path, plan)
    view = StoreView(path)
    expected = (plan.plan_id, plan.plan_id, "done", "pending")

    before = disk.changes(FOLDER)
    for _ in range(20):
        assert looks(view, plan) == expected  # while the agent has it open: -wal and -shm
    assert disk.changes(FOLDER) == before

    agent.communicate("go\n", timeout=30)  # its last connection checkpoints and removes the -wal
    before = disk.changes(FOLDER)
    assert looks(view, plan) == expected
    assert disk.changes(FOLDER) == before

    CheckpointStore(path).close()  # the observer as it was: open a store to look
    opened = disk.changes(FOLDER)
    grew = {call: opened.get(call, 0) - before.get(call, 0) for call in opened}
    assert grew.get("write", 0) > 0 and grew.get("fsyncdir", 0) > 0, grew


def test_the_store_view_reads_a_store_a_cut_left_with_its_wal_and_no_wal_index(disk) -> None:
    path = store_path(disk.mount / "sota" / "flow")
    plan = a_plan()
    agent = agent_holding_the_store(path, plan)
    agent.kill()
    agent.wait()
    disk.cut()  # the power goes with the agent: its -wal was synced at each commit, the -shm never
    before = disk.changes(FOLDER)
    view = StoreView(path)
    assert looks(view, plan) == (plan.plan_id, plan.plan_id, "done", "pending")
    assert disk.changes(FOLDER) == before
