"""The device configuration: `sota.toml` and its drop-ins, merged the way fioup merges them.

Every `*.toml` file found in the search path (a path may name a file or a folder of files) is
read; the files are ordered by base name, greatest first, and for each key the first file that
sets it wins. So `/etc/sota/conf.d/z-50-fioctl.toml` overrides `/var/sota/sota.toml`, exactly as
on a FoundriesFactory device, and a device configured for fioup works unchanged.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fioup_flow.errors import NotConfiguredError, UsageError
from fioup_flow.throttle import parse_rate
from fioup_flow.window import InstallWindows

DEFAULT_CFG_DIRS: tuple[str, ...] = ("/usr/lib/sota/conf.d", "/var/sota/sota.toml", "/etc/sota/conf.d/")
CFG_DIRS_ENV = ("FIOUP_FLOW_CFG_DIRS", "FIOUP_CFG_DIRS")
DEFAULT_STORAGE_PATH = "/var/sota"
DEFAULT_POLLING_SECONDS = 300  # fioup's and aktualizr-lite's default
DEFAULT_MAX_ATTEMPTS = 3  # fioup's daemon: api.WithMaxAttempts(3)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Where a LmP image ships the factory's roots (aktualizr-lite's default for the key below).
DEFAULT_TUF_ROOTS_PATH = "/usr/lib/sota/tuf"
TUF_MODES = ("tuf", "plain")
# Long enough for what fails in the first seconds of a service's life (a bad config, a dependency
# out of reach after a connect timeout of 10 s, a crash loop under Docker's restart back-off), short
# enough that an update keeps the device's old version only briefly; see the README.
DEFAULT_HEALTH_WINDOW_S = 15.0
MAX_HEALTH_WINDOW_S = 3600


def cfg_dirs_from_env(environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The search path: the first of the environment overrides that is set, else the default."""
    for name in CFG_DIRS_ENV:
        value = environ.get(name, "").strip()
        if value:
            return split_list(value)
    return DEFAULT_CFG_DIRS


def split_list(value: str) -> tuple[str, ...]:
    """Split a comma-separated list, dropping blanks ("a, b," -> ("a", "b"))."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def find_toml_files(cfg_dirs: tuple[str, ...]) -> list[Path]:
    """Every `.toml` file named by or found directly inside the search paths, greatest base name first."""
    files: list[Path] = []
    for entry in cfg_dirs:
        path = Path(entry)
        if path.is_dir():
            files.extend(p for p in path.iterdir() if p.suffix == ".toml" and p.is_file())
        elif path.is_file():
            files.append(path)
    # Stable: for equal base names, the earlier search path keeps precedence.
    return sorted(files, key=lambda p: p.name, reverse=True)


def no_config_message(cfg_dirs: tuple[str, ...]) -> str:
    """Which paths were searched and what each held, so a typo shows at once."""
    searched = "; ".join(f"{entry} ({'a folder with no *.toml file' if Path(entry).is_dir() else 'does not exist'})"
                         for entry in cfg_dirs) or "no path"
    return (f"no config found: searched {searched}. Register the device (fioup-flow register), or name "
            f"its sota.toml with -c or ${CFG_DIRS_ENV[0]}")


def merge_toml(files: list[Path], origins: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """Merge the files key by key: the first file (in the given order) that sets a key wins; `origins`,
    if given, gets which file (its index) set each "section.key"."""
    merged: dict[str, dict[str, Any]] = {}
    for index, path in enumerate(files):
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"cannot read config file {path}: {exc}") from exc
        for section, values in data.items():
            if not isinstance(values, dict):
                continue
            target = merged.setdefault(section, {})
            for key, value in values.items():
                if key not in target and origins is not None:
                    origins[f"{section}.{key}"] = index
                target.setdefault(key, value)
    return merged


@dataclass(frozen=True)
class Config:
    """The merged configuration, with typed accessors for the keys fioup-flow uses."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    origins: dict[str, int] = field(default_factory=dict)  # "section.key" -> index in `files` of the file that set it

    @classmethod
    def load(cls, cfg_dirs: tuple[str, ...] | None = None) -> "Config":
        """Read and merge the configuration found in `cfg_dirs` (default: environment, then fioup's path).

        Finding no file at all is an error (exit 3), as in fioup: a mistyped path must not pass
        for a device that was never registered, nor `resume` at boot skip an update in progress.
        """
        cfg_dirs = cfg_dirs if cfg_dirs is not None else cfg_dirs_from_env()
        files = find_toml_files(cfg_dirs)
        if not files:
            raise NotConfiguredError(no_config_message(cfg_dirs))
        origins: dict[str, int] = {}
        return cls(values=merge_toml(files, origins), files=tuple(files), origins=origins)

    def get(self, section: str, key: str, default: Any = None) -> Any:
        return self.values.get(section, {}).get(key, default)

    def _winning(self, section: str, *names: str) -> str:
        """Of `names`, names of one setting (other updaters' keys), the one set by the file that comes
        first, as for any key (the first name on a tie, and when none is set)."""
        set_ = [n for n in names if f"{section}.{n}" in self.origins]
        return min(set_, key=lambda n: (self.origins[f"{section}.{n}"], names.index(n))) if set_ else names[0]

    def _path(self, section: str, key: str, default: str) -> Path:
        """A path key; a relative value is taken relative to `storage.path`."""
        value = Path(str(self.get(section, key, default)))
        return value if value.is_absolute() else self.storage_path / value

    @property
    def storage_path(self) -> Path:
        return Path(str(self.get("storage", "path", DEFAULT_STORAGE_PATH)))

    @property
    def server(self) -> str:
        """The Device Gateway's base URL (`tls.server`); required for anything that talks to it."""
        server = str(self.get("tls", "server", "")).strip().rstrip("/")
        if not server:
            where = ", ".join(str(f) for f in self.files) or "no sota.toml was found"
            raise NotConfiguredError(
                f"tls.server is not set ({where}); register the device first (fioup-flow register)"
            )
        return server

    @property
    def ca_cert(self) -> Path:
        return self._path("import", "tls_cacert_path", "root.crt")

    @property
    def client_cert(self) -> Path:
        return self._path("import", "tls_clientcert_path", "client.pem")

    @property
    def client_key(self) -> Path:
        return self._path("import", "tls_pkey_path", "pkey.pem")

    @property
    def tags(self) -> tuple[str, ...]:
        return split_list(str(self.get("pacman", "tags", "")))

    @property
    def compose_apps(self) -> tuple[str, ...] | None:
        """The apps to run: None when unset (all of the Target's apps); () when set but blank (none)."""
        value = self.get("pacman", "compose_apps")
        if value is None:
            return None
        if isinstance(value, list):
            return tuple(str(v).strip() for v in value if str(v).strip())
        return split_list(str(value))

    @property
    def reset_apps_root(self) -> Path:
        return self._path("pacman", "reset_apps_root", str(self.storage_path / "reset-apps"))

    @property
    def compose_apps_root(self) -> Path:
        return self._path("pacman", "compose_apps_root", str(self.storage_path / "compose-apps"))

    def _whole_number(self, section: str, key: str, default: int, low: int, high: int | None = None) -> int:
        """An integer key (a TOML integer or a string of digits, as fioup's string-typed config
        holds them) within [low, high]; anything else is a UsageError (exit 2) naming the key."""
        raw = self.get(section, key, default)
        try:
            if isinstance(raw, (bool, float)):
                raise ValueError(raw)
            value = int(raw)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{section}.{key} must be a whole number, not {raw!r}") from exc
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise UsageError(f"{section}.{key} must be {bounds}, not {value}")
        return value

    @property
    def storage_watermark(self) -> int:
        """Percentage of the store's filesystem that apps may fill (20 to 99, default 95)."""
        return self._whole_number("pacman", "storage_watermark", 95, 20, 99)

    @property
    def polling_seconds(self) -> int:
        """The daemon's interval between checks: `uptane.polling_seconds` (fioup's key) or
        `uptane.polling_sec` (aktualizr-lite's), whichever the winning file sets (fioup's in the same
        file), default 300. fioup takes an invalid value for 300 without a word; here it is an error
        (exit 2): a typo must not pass for the default."""
        key = self._winning("uptane", "polling_seconds", "polling_sec")
        return self._whole_number("uptane", key, DEFAULT_POLLING_SECONDS, 1)

    @property
    def max_attempts(self) -> int:
        """`pacman.max_attempts`: how many failed attempts at a Target the daemon makes before it
        gives the update up and syncs back to the current Target (default 3, fioup's daemon's)."""
        return self._whole_number("pacman", "max_attempts", DEFAULT_MAX_ATTEMPTS, 1)

    @property
    def install_window(self) -> InstallWindows | None:
        """`pacman.install_window` ("02:00-04:00", see `window`); None when unset or blank: always."""
        raw = str(self.get("pacman", "install_window", "")).strip()
        return InstallWindows.parse(raw) if raw else None

    @property
    def health_window(self) -> float:
        """`pacman.health_window`: seconds each service an update starts must stay up (no restart)
        before the update is committed. 0 commits once every service is up."""
        raw = self.get("pacman", "health_window", DEFAULT_HEALTH_WINDOW_S)
        try:
            value = float(raw)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"pacman.health_window must be a number of seconds, not {raw!r}") from exc
        if not 0 <= value <= MAX_HEALTH_WINDOW_S:
            raise UsageError(f"pacman.health_window must be between 0 and {MAX_HEALTH_WINDOW_S} seconds, not {raw!r}")
        return value

    @property
    def prune_unused_images(self) -> bool:
        return str(self.get("pacman", "prune_unused_images", "0")).strip().lower() in ("1", "true", "yes")

    @property
    def engine_restart_command(self) -> tuple[str, ...]:
        """`pacman.engine_restart_command`, split as a shell would: how this device restarts its
        Docker engine when the engine leaked a port after a power cut. Empty: never restart it."""
        raw = self.get("pacman", "engine_restart_command", "")
        if isinstance(raw, list):
            return tuple(str(part) for part in raw)
        try:
            return tuple(shlex.split(str(raw)))
        except ValueError as exc:
            raise UsageError(f"pacman.engine_restart_command: {exc}") from exc

    @property
    def compose_env(self) -> dict[str, str]:
        """The `[compose_env]` section: variables set on the device on purpose for compose to see when
        it reads the apps' compose files (`${NAME}`). Nothing else from fioup-flow's own environment
        reaches compose but what `tasks.compose.INHERITED_ENV` names."""
        env = {}
        for name, value in self.values.get("compose_env", {}).items():
            if not ENV_NAME.match(name) or isinstance(value, (dict, list)):
                raise UsageError(f"compose_env.{name}: a variable needs a name of letters, digits and _ "
                                 f"and a single value, not {value!r}")
            env[name] = str(value).lower() if isinstance(value, bool) else str(value)
        return env

    @property
    def hardware_id(self) -> str:
        return str(self.get("provision", "primary_ecu_hardware_id", "")).strip()

    @property
    def download_rate(self) -> float | None:
        """`pacman.download_rate_limit` in bytes per second ("20M", "500k"), None for no limit."""
        raw = self.get("pacman", "download_rate_limit", "")
        try:
            return parse_rate(str(raw)) if str(raw).strip() else None
        except ValueError as exc:
            raise UsageError(f"pacman.download_rate_limit: {exc}") from exc

    @property
    def tuf_dir(self) -> Path:
        """Where the device keeps the TUF metadata it verified."""
        return self.storage_path / "tuf"

    @property
    def tuf_roots_path(self) -> Path:
        """`storage.uptane_metadata_path`: the folder of the roots the OS image ships (`ci/` and
        `prod/`), aktualizr-lite's key for it (`src/liteclient.cc`)."""
        return self._path("storage", "uptane_metadata_path", DEFAULT_TUF_ROOTS_PATH)

    @property
    def tuf_mode(self) -> str:
        """`pacman.tuf_mode`: "tuf" (default, full verification) or "plain" (fioup's default: the
        gateway's targets.json read unverified, trusting TLS alone)."""
        value = str(self.get("pacman", "tuf_mode", "tuf")).strip().lower()
        if value not in TUF_MODES:
            raise UsageError(f"pacman.tuf_mode must be one of {', '.join(TUF_MODES)}, not {value!r}")
        return value

    @property
    def flow_dir(self) -> Path:
        """Where fioup-flow keeps its own state: the checkpoint store and the event outbox."""
        return self.storage_path / "flow"
