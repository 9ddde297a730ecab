"""`fioup-flow graph`, `status` and `cancel` on real checkpoint stores written by the runner."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.engine.conftest import Device, diamond_plan, failing_plan
from tests.engine.kinds import KILL_ENV


@pytest.fixture
def failed(device: Device) -> Device:
    """A device whose update failed at `fetch:bad` (exit 40), with `write:x`, `write:y` done."""
    code, _, _ = device.run(failing_plan())
    assert code == 40
    return device


def test_with_no_update_in_progress_graph_and_status_say_so_and_exit_0(device: Device):
    for args in (["graph"], ["status"]):
        result = device.cli(*args)
        assert result.exit_code == 0 and "No update in progress" in result.stdout.splitlines()
    assert json.loads(device.cli("graph", "--format", "json").stdout)["nodes"] == []
    assert not device.flow_dir.exists()  # looking creates nothing


def test_status_with_the_engine_out_of_reach_says_so_and_exits_7_in_text_and_json(failed: Device):
    nowhere = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    result = failed.cli("status", env=nowhere)
    assert result.exit_code == 7
    assert "the Docker engine at unix:///nonexistent/docker.sock does not answer" in result.stderr
    data = json.loads(failed.cli("status", "--json", env=nowhere).stdout)
    assert data["exit_code"] == 7 and "unix:///nonexistent/docker.sock does not answer" in data["error"]


def test_status_shows_the_failed_node_and_its_error_and_the_counts(failed: Device):
    result = failed.cli_process("status")  # the installed command, as a process, once
    assert result.returncode == 0, result.stderr
    assert "target failing-target" in result.stdout
    assert "done 2" in result.stdout and "failed 1" in result.stdout and "pending 1" in result.stdout
    assert "failed fetch:bad: FetchError: registry said no" in result.stdout
    data = json.loads(failed.cli("status", "--json").stdout)
    assert data["in_progress"]["counts"] == {"done": 2, "failed": 1, "pending": 1, "running": 0, "skipped": 0}
    assert data["in_progress"]["failed"] == [{"id": "fetch:bad", "error": "FetchError: registry said no", "exit_code": 40}]


def test_graph_json_lists_every_node_with_its_state_and_every_edge(failed: Device):
    data = json.loads(failed.cli("graph", "--format", "json").stdout)
    states = {n["id"]: (n["kind"], n["state"], n["attempts"]) for n in data["nodes"]}
    assert states == {"write:x": ("write", "done", 1), "write:y": ("write", "done", 1),
                      "fetch:bad": ("fail", "failed", 1), "write:after-bad": ("write", "pending", 0)}
    assert all(isinstance(n["duration_s"], float) for n in data["nodes"] if n["state"] != "pending")
    assert {(e["from"], e["to"]) for e in data["edges"]} == {("write:x", "write:y"), ("fetch:bad", "write:after-bad")}
    assert data["meta"] == {"target": "failing-target", "version": 8} and len(data["plan_id"]) == 26


def test_graph_text_shows_each_node_with_its_state_and_the_failure(failed: Device):
    text = failed.cli("graph").stdout
    for expected in ("fetch:bad", "failed", "FetchError: registry said no", "write:after-bad", "pending", "done"):
        assert expected in text


@pytest.mark.skipif(not shutil.which("dot"), reason="graphviz `dot` is not installed")
def test_graph_dot_renders_with_graphviz(failed: Device):
    dot = failed.cli("graph", "--format", "dot").stdout
    svg = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, check=True).stdout
    assert "fetch:bad" in svg and "failed" in svg


def test_graph_mermaid_is_a_flowchart_with_states_as_classes(failed: Device):
    mermaid = failed.cli("graph", "--format", "mermaid").stdout
    assert mermaid.startswith("flowchart TD\n")
    assert '["fetch:bad<br/>failed"]:::failed' in mermaid
    assert mermaid.count("-->") == 2


def test_cancel_without_a_runner_moves_the_plan_to_history_as_cancelled(failed: Device):
    result = failed.cli("cancel")
    assert result.exit_code == 0 and "Cancelled update" in result.stdout
    data = json.loads(failed.cli("status", "--json").stdout)
    assert data["in_progress"] is None
    assert data["history"][0]["outcome"] == "cancelled"
    assert data["history"][0]["failed"] == {"fetch:bad": "FetchError: registry said no"}
    assert failed.cli("cancel").stdout.strip() == "No update in progress to cancel"
    assert failed.run(diamond_plan())[0] == 0  # a new update may start


def test_cancel_while_a_runner_runs_stops_it_at_the_next_node_boundary(device: Device):
    plan = diamond_plan(sleep=0.15)
    runner = device.runner(plan)
    while not device.runs():
        assert runner.poll() is None
    result = device.cli("cancel")
    assert "the runner stops" in result.stdout
    out, _ = runner.communicate(timeout=10)
    assert runner.returncode == 1 and json.loads(out)["outcome"] == "cancelled"
    assert len(device.runs()) <= 2
    assert json.loads(device.cli("status", "--json").stdout)["history"][0]["outcome"] == "cancelled"


def test_status_and_graph_show_a_node_killed_mid_way_as_running(device: Device):
    device.run(diamond_plan(), env={KILL_ENV: "write:b@logged"})
    data = json.loads(device.cli("graph", "--format", "json").stdout)
    assert {n["id"]: n["state"] for n in data["nodes"]}["write:b"] == "running"
    assert device.run()[0] == 0
    assert json.loads(device.cli("status", "--json").stdout)["history"][0]["outcome"] == "completed"
