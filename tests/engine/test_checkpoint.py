"""The checkpoint store: durable settings in force, the frozen plan kept byte for byte, damage
reported (exit 5) with a way out that works, and one runner at a time."""

from __future__ import annotations

import os
import shutil
import signal

import diskcache
import pytest

from fioup_flow.checkpoint import CheckpointStore
from fioup_flow.durable import DURABLE_CACHE_SETTINGS
from fioup_flow.errors import CheckpointStoreError
from fioup_flow.graph import Plan
from fioup_flow.task import Node
from tests.engine.conftest import Device, diamond_plan, failing_plan
from tests.engine.kinds import KILL_ENV

DURABLE = {key: DURABLE_CACHE_SETTINGS[key] for key in ("eviction_policy", "sqlite_synchronous", "disk_min_file_size")}


def test_the_durable_settings_are_in_force_on_a_new_store(tmp_path):
    with CheckpointStore(tmp_path / "checkpoint") as store:
        assert store.settings() == {"eviction_policy": "none", "sqlite_synchronous": 2,
                                    "disk_min_file_size": DURABLE_CACHE_SETTINGS["disk_min_file_size"]}


def test_the_durable_settings_are_in_force_even_on_a_database_created_with_diskcache_defaults(tmp_path):
    with diskcache.Cache(str(tmp_path / "checkpoint")) as cache:
        assert cache.eviction_policy == "least-recently-stored"
        assert cache.sqlite_synchronous == 1
    with CheckpointStore(tmp_path / "checkpoint") as store:
        assert store.settings() == DURABLE


def test_a_big_frozen_plan_stays_inside_sqlite_with_no_unsynced_side_files(tmp_path):
    plan = Plan()
    for i in range(2000):
        plan.add(Node(f"fetch:sha256:{i:064x}", "fetch", {"uri": "x" * 100}, resource="network"))
    with CheckpointStore(tmp_path / "checkpoint") as store:
        store.freeze(plan)
        assert len(store.frozen_json(plan.plan_id)) > 32 * 1024  # bigger than diskcache's side-file threshold
    files = {p.name for p in (tmp_path / "checkpoint").rglob("*") if p.is_file()}
    assert files <= {"cache.db", "cache.db-wal", "cache.db-shm", "store.json"}


def test_the_frozen_plan_survives_a_kill_and_a_restart_byte_for_byte(device: Device):
    plan = diamond_plan()
    code, _, _ = device.run(plan, env={KILL_ENV: "write:d@logged"})
    assert code == -signal.SIGKILL
    with device.store() as store:
        assert store.frozen_json(plan.plan_id) == plan.to_json()
        assert store.current_plan().to_json() == plan.to_json()


def corrupt_header(db):
    with open(db, "r+b") as f:
        f.write(b"not a database" * 8)


def truncate_half(db):
    os.truncate(db, os.path.getsize(db) // 2)


def empty(db):
    os.truncate(db, 0)


@pytest.mark.parametrize("damage", [corrupt_header, truncate_half, empty, os.unlink],
                         ids=["corrupt-header", "truncated", "emptied", "deleted"])
def test_a_damaged_database_is_exit_5_naming_the_file_and_discard_state_is_the_way_out(device: Device, damage):
    assert device.run(failing_plan())[0] == 40
    damage(device.store_dir / "cache.db")
    for args in (["status"], ["graph"], ["cancel"]):
        broken = device.cli(*args)
        assert broken.exit_code == 5, broken.stderr
        assert str(device.store_dir / "cache.db") in broken.stderr
        assert "fioup-flow cancel --discard-state" in broken.stderr
    with pytest.raises(CheckpointStoreError):
        device.store()
    way_out = device.cli("cancel", "--discard-state")
    assert way_out.exit_code == 0, way_out.stderr
    assert "aside" in way_out.stdout
    assert any(p.name.startswith("checkpoint.discarded-") for p in device.flow_dir.iterdir())
    assert "No update in progress" in device.cli("status").stdout
    shutil.rmtree(device.work)
    assert device.run(diamond_plan())[0] == 0  # a fresh update runs


def test_a_frozen_plan_altered_in_the_database_is_refused_not_resumed(device: Device):
    plan = diamond_plan()
    device.run(plan, env={KILL_ENV: "write:b@begin"})
    with device.store() as store:
        store.cache.set(f"plan:{plan.plan_id}", store.frozen_json(plan.plan_id).replace("write:e", "write:E"))
    code, _, err = device.run()
    assert code == 5 and "checksum" in err and "--discard-state" in err
    assert device.runs() == ["write:a"]


def test_a_second_runner_is_refused_while_one_holds_the_lock(device: Device):
    first = device.runner(diamond_plan(sleep=0.1))
    while not device.runs():
        assert first.poll() is None
    code, _, err = device.run()
    assert code == 4
    assert f"process {first.pid} holds the lock" in err
    first.communicate(timeout=10)
    assert first.returncode == 0
