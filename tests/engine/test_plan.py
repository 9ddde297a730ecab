"""Plans: validation with clear errors, byte-stable freezing, sortable plan ids."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from fioup_flow.graph import Plan, PlanError, new_plan_id
from fioup_flow.task import Node
from tests.engine.conftest import diamond_plan


def test_a_cycle_is_an_error_that_names_the_cycle():
    plan = Plan()
    plan.add(Node("a", "k"), ["c"])
    plan.add(Node("b", "k"), ["a"])
    plan.add(Node("c", "k"), ["b"])
    with pytest.raises(PlanError, match=r"cycle .*a.*b.*c|cycle .*b.*c.*a|cycle .*c.*a.*b"):
        plan.validate()


def test_a_dependency_on_an_unknown_node_is_an_error_that_names_both():
    plan = Plan()
    plan.add(Node("install:app@sha256:1", "install"), ["fetch:sha256:missing"])
    with pytest.raises(PlanError, match="install:app@sha256:1 depend.* 'fetch:sha256:missing'"):
        plan.to_json()


def test_a_node_id_added_twice_and_an_unknown_resource_class_are_errors():
    plan = Plan()
    plan.add(Node("a", "k"))
    with pytest.raises(PlanError, match="twice"):
        plan.add(Node("a", "k"))
    with pytest.raises(PlanError, match="resource"):
        plan.add(Node("b", "k", resource="gpu"))


def test_the_frozen_plan_is_byte_for_byte_the_same_whatever_the_order_nodes_were_added_in():
    forward = diamond_plan()
    backward = Plan(plan_id=forward.plan_id, meta=dict(reversed(list(forward.meta.items()))))
    for node in reversed(list(forward.nodes())):
        backward.add(node, forward.dependencies(node.id))
    assert backward.to_json() == forward.to_json()
    assert Plan.from_json(forward.to_json()).to_json() == forward.to_json()


def test_plan_ids_are_26_characters_unique_and_sort_by_creation_time():
    first = new_plan_id()
    time.sleep(0.002)
    later = [new_plan_id() for _ in range(100)]
    assert len(first) == 26
    assert len(set(later)) == 100
    assert all(first < other for other in later)


def test_a_point_of_no_return_survives_freezing_and_a_plan_frozen_before_the_marker_existed_still_loads():
    plan = diamond_plan()
    marked = Plan(plan_id=plan.plan_id, meta=plan.meta)
    for node in plan.nodes():
        marked.add(dataclasses.replace(node, point_of_no_return=node.id == "write:d"), plan.dependencies(node.id))
    thawed = Plan.from_json(marked.to_json())
    assert [n.id for n in thawed.nodes() if n.point_of_no_return] == ["write:d"]
    assert thawed.ancestors("write:d") == {"write:a", "write:b", "write:c"}
    old = json.loads(plan.to_json())  # what the version before the marker froze: no such field
    assert all("point_of_no_return" not in raw for raw in old["nodes"])
    assert not any(n.point_of_no_return for n in Plan.from_json(plan.to_json()).nodes())
    assert Plan.from_json(plan.to_json()).to_json() == plan.to_json()
