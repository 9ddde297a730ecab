"""Targets: what versions of which apps exist for this device, parsed and selected as fioup does
(`pkg/target`): a Target is kept only if its version is an integer, it lists this device's hardware
ID, and every app URI is digest-pinned and named after its key. Where the Targets come from, and
what vouches for them, is `fioup_flow.metadata`'s (this module needs no TUF: `status` reads the
installed Target at the cost of no TUF import).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from fioup_flow.errors import NoMatchingTargetError, TargetNotFoundError
from fioup_flow.reference import PinnedRef, ReferenceError

log = logging.getLogger(__name__)

VERSION_UPPER_LIMIT_ENV = "FIOUP_VERSION_UPPER_LIMIT"


@dataclass(frozen=True)
class App:
    name: str
    uri: str

    @property
    def ref(self) -> PinnedRef:
        return PinnedRef.parse(self.uri)


@dataclass(frozen=True)
class Target:
    name: str
    version: int
    apps: tuple[App, ...]
    custom: dict[str, Any]

    def app(self, name: str) -> App | None:
        return next((a for a in self.apps if a.name == name), None)

    def narrowed(self, compose_apps: tuple[str, ...] | None) -> "Target":
        """The Target with only the apps the config enables (None: all of them)."""
        if compose_apps is None:
            return self
        return Target(self.name, self.version, tuple(a for a in self.apps if a.name in compose_apps), self.custom)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "apps": [{"name": a.name, "uri": a.uri} for a in self.apps]}


def parse_target(name: str, custom: dict[str, Any], hardware_id: str) -> Target | None:
    """A Target from TUF target info, or None (logged) when it is not for this device or malformed."""
    try:
        version = int(str(custom.get("version", "")))
    except ValueError:
        log.warning("target %s: version %r is not an integer; skipped", name, custom.get("version"))
        return None
    if hardware_id not in (custom.get("hardwareIds") or []):
        return None
    apps = []
    for app_name, info in sorted((custom.get("docker_compose_apps") or {}).items()):
        uri = (info or {}).get("uri", "")
        try:
            ref = PinnedRef.parse(uri)
        except ReferenceError as exc:
            log.error("target %s: app %s: %s; target skipped", name, app_name, exc)
            return None
        if ref.name != app_name:
            log.error("target %s: app %s has URI %s named %s; target skipped", name, app_name, uri, ref.name)
            return None
        apps.append(App(app_name, uri))
    return Target(name, version, tuple(apps), custom)


def version_upper_limit() -> int | None:
    raw = os.environ.get(VERSION_UPPER_LIMIT_ENV, "").strip()
    return int(raw) if raw.isdigit() else None


def select_target(targets: list[Target], version: int | None = None) -> Target:
    """The Target of `version`, or the latest one (capped by $FIOUP_VERSION_UPPER_LIMIT)."""
    if version is not None:
        match = [t for t in targets if t.version == version]
        if not match:
            known = ", ".join(str(t.version) for t in targets) or "none"
            raise TargetNotFoundError(f"no Target of version {version} for this device (versions: {known})")
        return match[-1]
    limit = version_upper_limit()
    eligible = [t for t in targets if limit is None or t.version <= limit]
    if not eligible:
        raise NoMatchingTargetError("no Target matches this device (hardware ID, tags"
                                    + (f", version <= {limit})" if limit is not None else ")"))
    return eligible[-1]
