"""Devices registered against the session's local factory, driven through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@dataclass
class Device:
    """A registered device: its sota dir, and `run(...)` to call `fioup-flow` on it."""

    name: str
    sota_dir: Path

    @property
    def cfg(self) -> Path:
        return self.sota_dir / "sota.toml"

    def run(self, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        return fioup_flow(["-c", str(self.cfg), *args], timeout=timeout, env=env)

    def json(self, *args: str) -> dict:
        done = self.run(*args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])


def fioup_flow(args: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, FIOUP_FLOW_RETRY_SECONDS="3", **(env or {}))
    return subprocess.run([str(BIN / "fioup-flow"), *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, stdin=subprocess.DEVNULL)


def register(factory, sota_dir: Path, name: str | None = None, *extra: str) -> subprocess.CompletedProcess:
    name = name or f"dev-{uuid.uuid4().hex[:8]}"
    return fioup_flow(["register", "--server", factory.info["api"], "--token", factory.info["registration_token"],
                       "--ca", factory.info["ca"], "--name", name, "--sota-dir", str(sota_dir), *extra])


@pytest.fixture
def make_device(factory, tmp_path: Path):
    """Register a new device (name, tags, hardware ID as asked) and return it."""
    made = []

    def make(*extra: str) -> Device:
        sota_dir = tmp_path / f"device{len(made)}"
        name = f"dev-{uuid.uuid4().hex[:8]}"
        done = register(factory, sota_dir, name, *extra)
        assert done.returncode == 0, done.stderr
        made.append(Device(name, sota_dir))
        return made[-1]

    return make
