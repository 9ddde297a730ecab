"""Running Docker Compose v2 for an app: `up` and `down`, project name = app name (as fioup does).

Compose is run as a subprocess, the way a person would run it, so that every behaviour of a
real compose (networks, volumes, orphans, health checks) is exactly compose's own. Pulls are
disabled: an app's images are loaded from the blob store before it starts, and an update must
never reach for a registry at start time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from fioup_flow.errors import FioupFlowError

COMPOSE_ENV = "FIOUP_FLOW_COMPOSE"
OVERRIDE_FILE = "docker-compose.fioup-flow.yml"
TIMEOUT_S = 300


def compose_command() -> list[str]:
    """The compose binary: `$FIOUP_FLOW_COMPOSE`, `docker-compose` on PATH or beside Python, or `docker compose`."""
    override = os.environ.get(COMPOSE_ENV)
    if override:
        return override.split()
    beside_python = Path(sys.executable).parent / "docker-compose"
    found = shutil.which("docker-compose") or (str(beside_python) if beside_python.exists() else None)
    if found:
        return [found]
    if shutil.which("docker"):
        return ["docker", "compose"]
    raise FioupFlowError("Docker Compose v2 was not found (install docker-compose or set $FIOUP_FLOW_COMPOSE)")


def run_compose(args: list[str], error: type[FioupFlowError], what: str, cwd: Path | None = None) -> str:
    """Run compose; a non-zero exit raises `error` carrying compose's own last words."""
    try:
        done = subprocess.run(compose_command() + args, cwd=cwd or "/", capture_output=True, text=True,
                              timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise error(f"{what}: docker compose did not finish within {TIMEOUT_S} s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise error(f"{what}: docker compose failed ({done.returncode}):\n{tail}")
    return done.stdout


def project_files(project: Path) -> list[str]:
    """The compose file pinned by the publisher plus our override that names the loaded images."""
    files = ["-f", str(project / "docker-compose.yml")]
    if (project / OVERRIDE_FILE).exists():
        files += ["-f", str(project / OVERRIDE_FILE)]
    return files


def up(name: str, project: Path, error: type[FioupFlowError], recreate: bool = False) -> None:
    """Start the app; `recreate` makes new containers even for services whose config is unchanged."""
    run_compose(["-p", name, "--project-directory", str(project), *project_files(project),
                 "up", "-d", "--remove-orphans", "--pull", "never", "--no-build",
                 *(["--force-recreate"] if recreate else [])], error, f"starting app {name}", cwd=project)


def stop(name: str, error: type[FioupFlowError]) -> None:
    """Stop the app's containers, keeping them and its networks for `up` to replace."""
    run_compose(["-p", name, "stop"], error, f"stopping app {name}")


def down(name: str, error: type[FioupFlowError]) -> None:
    """Stop and remove the app's containers and networks (volumes are kept), by project name only."""
    run_compose(["-p", name, "down", "--remove-orphans"], error, f"stopping app {name}")


def config_check(name: str, project: Path, error: type[FioupFlowError]) -> None:
    """Let compose itself validate the project (schema, interpolation) before anything is stopped."""
    run_compose(["-p", name, "--project-directory", str(project), *project_files(project), "config", "-q"],
                error, f"checking app {name}", cwd=project)
