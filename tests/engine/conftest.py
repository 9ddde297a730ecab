"""Fixtures for the engine tests: a device folder with a sota.toml, plans of test task kinds,
and a way to run the real runner process and the real CLI against them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fioup_flow.checkpoint import CheckpointStore, store_path  # noqa: E402
from fioup_flow.cli import main  # noqa: E402
from fioup_flow.graph import Plan  # noqa: E402
from fioup_flow.task import Node  # noqa: E402
from tests.engine.kinds import write_node  # noqa: E402

RUNNER = Path(__file__).with_name("runner.py")
FIOUP_FLOW = Path(sys.executable).with_name("fioup-flow")


@dataclass
class Device:
    """A device's folders: the config, fioup-flow's state (flow_dir) and the tasks' work area."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "sota.toml"

    @property
    def flow_dir(self) -> Path:
        return self.root / "storage" / "flow"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def store_dir(self) -> Path:
        return store_path(self.flow_dir)

    def store(self) -> CheckpointStore:
        return CheckpointStore(self.store_dir)

    def runner(self, plan: Plan | None = None, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        """Start the runner process on `plan` (frozen if new) or, with no plan, on the plan in progress."""
        args = [sys.executable, str(RUNNER), str(self.flow_dir), str(self.work)]
        if plan is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            plan_file = self.root / f"plan-{plan.plan_id}.json"
            plan_file.write_text(plan.to_json())
            args.append(str(plan_file))
        return subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **kwargs)

    def run(self, plan: Plan | None = None, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
        proc = self.runner(plan, env)
        out, err = proc.communicate(timeout=30)
        return proc.returncode, (json.loads(out) if out.strip() else {}), err

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """The real `fioup-flow` command, run in this process by click's CliRunner (fast)."""
        return CliRunner().invoke(main, ["-c", str(self.config), *args], catch_exceptions=False, env=env)

    def cli_process(self, *args: str) -> subprocess.CompletedProcess:
        """The installed `fioup-flow` command, as a process."""
        return subprocess.run([str(FIOUP_FLOW), "-c", str(self.config), *args],
                              capture_output=True, text=True, timeout=30)

    def runs(self) -> list[str]:
        """Every run of a `write` node, in order (from the fsynced run log)."""
        log = self.work / "runs.log"
        return log.read_text().splitlines() if log.exists() else []

    def outputs(self) -> dict[str, str]:
        """The output files by name. A kill inside `write_atomic` may leave its `.name.tmp-<pid>`
        behind: litter of an attempt that never became the output, so not an output."""
        out = self.work / "out"
        return {p.name: p.read_text() for p in sorted(out.iterdir()) if ".tmp-" not in p.name} if out.exists() else {}


@pytest.fixture
def device(tmp_path: Path) -> Device:
    dev = Device(tmp_path)
    dev.config.write_text(f'[storage]\npath = "{tmp_path / "storage"}"\n')
    return dev


def diamond_plan(sleep: float = 0.0, slow: str = "abcdefghi") -> Plan:
    """Nine write nodes: a diamond, a chain after it, and an independent branch.

        a -> b, a -> c, (b, c) -> d -> e ;  f -> g -> h ; i

    Each node named in `slow` sleeps `sleep` seconds while it runs.
    """
    plan = Plan(meta={"target": "test-target", "version": 7})
    after = {"b": "a", "c": "a", "d": "bc", "e": "d", "g": "f", "h": "g"}
    for name in "abcdefghi":
        plan.add(write_node(f"write:{name}", sleep=sleep if name in slow else 0.0),
                 [f"write:{d}" for d in after.get(name, "")])
    return plan


def failing_plan() -> Plan:
    """`fetch:bad` fails for good; `write:after-bad` waits on it; `write:x` -> `write:y` is independent."""
    plan = Plan(meta={"target": "failing-target", "version": 8})
    plan.add(write_node("write:x"))
    plan.add(write_node("write:y"), ["write:x"])
    plan.add(Node("fetch:bad", "fail", {"message": "registry said no"}, resource="network"))
    plan.add(write_node("write:after-bad"), ["fetch:bad"])
    return plan
