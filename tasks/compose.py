"""Running Docker Compose v2 for an app: `up`, `stop`, `down`, `config`, project name = app name (as fioup does).

Compose is run as a subprocess, the way a person would run it, so that every behaviour of a
real compose (networks, volumes, orphans, health checks) is exactly compose's own. Pulls are
disabled: an app's images are loaded from the blob store before it starts, and an update must
never reach for a registry at start time.

Compose runs with a stated environment, never fioup-flow's own. A compose file interpolates
`${NAME}` from compose's environment, so an inherited one would let any app copy what the agent's
environment holds (a registration token, proxy credentials, whatever the service unit sets) into
its containers, and `COMPOSE_FILE` or `COMPOSE_PROJECT_NAME` there would change what compose runs.
Compose sees `INHERITED_ENV` and the device's `[compose_env]` variables, and reads the app's own
`.env` from the project folder as it always does.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from fioup_flow.errors import EngineUnsupportedError, FioupFlowError, UsageError
from tasks.appstate import engine_address

COMMAND_ENV = "FIOUP_FLOW_COMPOSE"
OVERRIDE_FILE = "docker-compose.fioup-flow.yml"
TIMEOUT_S = 300
VERSION_TIMEOUT_S = 30

# The oldest Compose in which every flag used below does what fioup-flow means by it. `up --pull
# never` exists from 2.8.0 but was ignored until 2.15.0 (docker/compose a22478079, "Set
# `pullChanged` when setting `--pull` on `compose up`"); `up --no-build --remove-orphans`,
# `config -q`, and `stop`/`down` by project name alone are older.
MIN_VERSION = (2, 15, 0)
VERSION = re.compile(r"version v?(\d+)\.(\d+)\.(\d+)", re.IGNORECASE)

# What compose inherits from fioup-flow's environment (name: why); nothing else does.
INHERITED_ENV = {
    # Always set, to the engine fioup-flow itself inspects (the Docker SDK's address), so that no
    # CLI context in a config file can point compose at another engine.
    "DOCKER_HOST": "the engine to drive",
    "DOCKER_TLS_VERIFY": "TLS to an engine reached over TCP, as fioup-flow reaches it",
    "DOCKER_CERT_PATH": "the client certificate for that TLS",
    "DOCKER_CONFIG": "the docker CLI's config folder: where `docker compose` finds its plugin",
    "HOME": "where that folder is when DOCKER_CONFIG is unset (~/.docker)",
    "PATH": "programs compose runs itself (the docker CLI, credential helpers)",
}


def version_text(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


@dataclass(frozen=True)
class ComposeBinary:
    """The compose chosen for this process: how to run it, and its version."""

    command: tuple[str, ...]
    version: tuple[int, int, int]

    def __str__(self) -> str:
        return f"{' '.join(self.command)} (Compose {version_text(self.version)})"


class Compose:
    """How fioup-flow runs compose: one binary, chosen once per process, with one stated environment.

    `device_env` is the device's `[compose_env]` config section: the variables an operator sets
    on purpose for the apps' compose files to read. They may not redefine what `INHERITED_ENV`
    names: compose must drive the engine fioup-flow checks, the way it checks it.
    """

    def __init__(self, device_env: Mapping[str, str] | None = None, environ: Mapping[str, str] = os.environ):
        device_env = dict(device_env or {})
        clash = sorted(set(device_env) & set(INHERITED_ENV))
        if clash:
            raise UsageError(f"compose_env may not set {', '.join(clash)}: compose drives the engine "
                             f"fioup-flow itself talks to ({engine_address(environ)})")
        inherited = {name: environ[name] for name in INHERITED_ENV if name in environ}
        self.env = {**inherited, "DOCKER_HOST": engine_address(environ), **device_env}
        self.explicit = environ.get(COMMAND_ENV, "").strip()
        self.search_path = environ.get("PATH", os.defpath)
        # One compose at a time, whichever node runs it: each is a Go process of about 55 MB, and a
        # device's budget for fioup-flow and all it starts (100 MB) has room for one. Nodes that
        # run beside it (an image load, a wait for an app to come up) need no compose.
        self._one_at_a_time = threading.Lock()

    # -- which compose ---------------------------------------------------------------------------

    @cached_property
    def binary(self) -> ComposeBinary:
        """`$FIOUP_FLOW_COMPOSE` if set, else `docker compose`, else the first `docker-compose` on PATH
        that is Compose v2 at or above MIN_VERSION: a stray v1 (the Python `docker-compose`, still
        Debian 12's) earlier on PATH is passed over. None usable: EngineUnsupportedError (exit 8)."""
        seen = []
        for command in self._candidates():
            version, problem = self._version(command)
            if version is not None:
                return ComposeBinary(command, version)
            seen.append(f"{' '.join(command)}: {problem}")
        found = "; ".join(seen) or "no `docker` and no `docker-compose` on PATH"
        raise EngineUnsupportedError(
            f"no usable Docker Compose: fioup-flow needs Compose v2 {version_text(MIN_VERSION)} or newer "
            f"({found}). Install the compose plugin (`docker compose`), or name one with ${COMMAND_ENV}")

    def _candidates(self) -> list[tuple[str, ...]]:
        if self.explicit:
            return [tuple(shlex.split(self.explicit))]
        docker = shutil.which("docker", path=self.search_path)
        found = [(docker, "compose")] if docker else []
        for folder in dict.fromkeys(self.search_path.split(os.pathsep)):
            candidate = Path(folder or ".") / "docker-compose"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found.append((str(candidate),))
        return found

    def _version(self, command: tuple[str, ...]) -> tuple[tuple[int, int, int] | None, str]:
        """The version of the compose `command` runs if fioup-flow can use it, else None and why not."""
        try:
            done = subprocess.run([*command, "version"], env=self.env, capture_output=True, text=True,
                                  timeout=VERSION_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"does not run ({exc})"
        match = VERSION.search(done.stdout)
        if done.returncode != 0 or match is None:
            said = (done.stderr or done.stdout).strip().splitlines()
            return None, f"not a compose ({said[0] if said else f'exit {done.returncode}'})"
        version = (int(match[1]), int(match[2]), int(match[3]))
        if version[0] < 2:
            return None, f"Compose {version_text(version)} is v1, which fioup-flow cannot drive"
        if version < MIN_VERSION:
            return None, f"Compose {version_text(version)} is older than {version_text(MIN_VERSION)}"
        return version, ""

    # -- running it ------------------------------------------------------------------------------

    def run(self, args: list[str], error: type[FioupFlowError], what: str, cwd: Path | None = None) -> str:
        """Run compose; a non-zero exit raises `error` carrying compose's own last words."""
        try:
            with self._one_at_a_time:
                done = subprocess.run([*self.binary.command, *args], cwd=cwd or "/", env=self.env,
                                      capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise error(f"{what}: docker compose did not finish within {TIMEOUT_S} s") from exc
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
            raise error(f"{what}: docker compose failed ({done.returncode}):\n{tail}")
        return done.stdout

    def up(self, name: str, project: Path, error: type[FioupFlowError]) -> None:
        """Start the app."""
        self.run(["-p", name, "--project-directory", str(project), *project_files(project),
                  "up", "-d", "--remove-orphans", "--pull", "never", "--no-build"],
                 error, f"starting app {name}", cwd=project)

    def stop(self, name: str, error: type[FioupFlowError]) -> None:
        """Stop the app's containers, keeping them and its networks for `up` to replace."""
        self.run(["-p", name, "stop"], error, f"stopping app {name}")

    def down(self, name: str, error: type[FioupFlowError]) -> None:
        """Stop and remove the app's containers and networks (volumes are kept), by project name only."""
        self.run(["-p", name, "down", "--remove-orphans"], error, f"stopping app {name}")

    def config_check(self, name: str, project: Path, error: type[FioupFlowError]) -> None:
        """Let compose itself validate the project (schema, interpolation) before anything is stopped."""
        self.run(["-p", name, "--project-directory", str(project), *project_files(project), "config", "-q"],
                 error, f"checking app {name}", cwd=project)


def project_files(project: Path) -> list[str]:
    """The compose file pinned by the publisher plus our override that names the loaded images."""
    files = ["-f", str(project / "docker-compose.yml")]
    if (project / OVERRIDE_FILE).exists():
        files += ["-f", str(project / OVERRIDE_FILE)]
    return files
