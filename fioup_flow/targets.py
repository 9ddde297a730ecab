"""Targets: what versions of which apps exist for this device, verified with TUF.

python-tuf's `ngclient.Updater` does the whole TUF client workflow (root rotation, signatures
and thresholds, expiry, version rollback, snapshot consistency) and persists only metadata that
verified, so a failed refresh leaves the previously trusted metadata in place. We fetch through
the gateway's mutual-TLS session. Parsing and selection follow fioup (`pkg/target`): a Target is
kept only if its version is an integer, it lists this device's hardware ID, and every app URI is
digest-pinned and named after its key.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Targets
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

from fioup_flow.durable import fsync_dir, write_atomic
from fioup_flow.errors import (
    MetadataUpdateError,
    NoMatchingTargetError,
    NoSpaceError,
    TargetNotFoundError,
    exit_code_of,
)
from fioup_flow.gateway import GatewayClient, GatewayError
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


def parse_targets(targets: Targets, hardware_id: str) -> list[Target]:
    """This device's Targets, lowest version first."""
    parsed = (parse_target(name, info.custom or {}, hardware_id) for name, info in targets.targets.items())
    return sorted((t for t in parsed if t is not None), key=lambda t: (t.version, t.name))


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


class GatewayFetcher(FetcherInterface):
    """Lets python-tuf download metadata through the gateway's mutual-TLS session."""

    def __init__(self, gateway: GatewayClient):
        self.gateway = gateway

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            response = self.gateway.request("GET", url, stream=True)
        except GatewayError as exc:
            if exc.status_code is not None:
                raise tuf_errors.DownloadHTTPError(str(exc), exc.status_code) from exc
            raise tuf_errors.DownloadError(str(exc)) from exc
        return response.iter_content(chunk_size=16384)


class DurableUpdater(Updater):
    """ngclient's Updater, its writes made durable. ngclient writes metadata to a temporary file and
    renames it over the old one without syncing either, and replaces the `root.json` link to the
    trusted root by removing it first; it does both at every refresh. A disk may keep such a rename
    without the data renamed, or the removal without the new link: the device would be left with
    torn metadata, or no trusted root, and never update again. Here every file goes through
    `write_atomic` (synced, renamed, folder synced) and the link is made aside and renamed over."""

    def _persist_file(self, filename: str, data: bytes) -> None:
        write_atomic(Path(filename), data)

    def _update_root_symlink(self) -> None:
        link = Path(self._dir, "root.json")
        aside = link.with_name(f".root.json.link-{os.getpid()}")
        aside.unlink(missing_ok=True)
        os.symlink(os.path.join("root_history", f"{self._trusted_set.root.version}.root.json"), aside)
        os.replace(aside, link)
        fsync_dir(link.parent)


class TufClient:
    """The device's trusted view of its Targets, kept in `metadata_dir` (`<storage.path>/tuf`)."""

    def __init__(self, metadata_dir: Path, gateway: GatewayClient, hardware_id: str):
        self.metadata_dir = metadata_dir
        self.gateway = gateway
        self.hardware_id = hardware_id

    def refresh(self) -> list[Target]:
        """Download and verify the newest metadata; any failure is MetadataUpdateError (exit 20), but a
        full disk, which is NoSpaceError (41): nothing is wrong with the metadata."""
        if not (self.metadata_dir / "root.json").exists():
            raise MetadataUpdateError(f"no trusted TUF root in {self.metadata_dir}; register the device first")
        try:
            updater = DurableUpdater(
                metadata_dir=str(self.metadata_dir),
                metadata_base_url=self.gateway.url("repo/"),
                fetcher=GatewayFetcher(self.gateway),
                config=UpdaterConfig(app_user_agent=None),
                bootstrap=None,
            )
            updater.refresh()
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError, OSError, ValueError) as exc:
            if exit_code_of(exc) == NoSpaceError.exit_code:
                raise NoSpaceError(f"the disk holding {self.metadata_dir} is full while saving TUF metadata: "
                                   f"free some space, then try again") from exc
            raise MetadataUpdateError(f"TUF metadata update failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self._sync()
        return self.trusted_targets()

    def trusted_targets(self) -> list[Target]:
        """The Targets of the metadata that last verified (no network)."""
        path = self.metadata_dir / "targets.json"
        if not path.exists():
            return []
        return parse_targets(Metadata[Targets].from_file(str(path)).signed, self.hardware_id)

    def targets_version(self) -> int | None:
        """The version of the trusted targets metadata (None before the first refresh)."""
        path = self.metadata_dir / "targets.json"
        return Metadata[Targets].from_file(str(path)).signed.version if path.exists() else None

    def _sync(self) -> None:
        """ngclient renames without fsync; make what it persisted durable before we act on it."""
        if not self.metadata_dir.is_dir():
            return
        for folder in (self.metadata_dir, self.metadata_dir / "root_history"):
            if folder.is_dir():
                for entry in folder.iterdir():
                    if entry.is_file() and not entry.is_symlink():
                        fd = os.open(entry, os.O_RDONLY)
                        try:
                            os.fsync(fd)
                        finally:
                            os.close(fd)
                fsync_dir(folder)
