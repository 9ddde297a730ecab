"""Where the device's Targets come from, and what vouches for them.

By default the metadata is verified with TUF (`TufClient`, built on `fioup_flow.tuf`: the
factory's flavour, python-tuf's rules); fioup's plain mode trusts TLS alone (`PlainClient`). A
failed refresh leaves the metadata kept before in place. The Targets are parsed and selected as
fioup does (`fioup_flow.targets`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from tuf.api.exceptions import DownloadError, DownloadLengthMismatchError, RepositoryError
from tuf.api.metadata import Targets

from fioup_flow.config import Config
from fioup_flow.durable import write_atomic
from fioup_flow.errors import FioupFlowError, MetadataUpdateError, NoSpaceError, exit_code_of
from fioup_flow.gateway import GatewayClient, GatewayError
from fioup_flow.targets import Target, parse_target
from fioup_flow.tuf.flavour import FlavourError, load
from fioup_flow.tuf.roots import is_production, shipped_chain
from fioup_flow.tuf.updater import Updater


def parse_targets(targets: Targets, hardware_id: str) -> list[Target]:
    """This device's Targets, lowest version first."""
    parsed = (parse_target(name, info.custom or {}, hardware_id) for name, info in targets.targets.items())
    return sorted((t for t in parsed if t is not None), key=lambda t: (t.version, t.name))


class TargetsSource(ABC):
    """Where the device's Targets come from; `trust` says in words what vouches for them."""

    trust: str

    def __init__(self, config: Config, gateway: GatewayClient | None, targets_path: Path):
        self.config = config
        self.gateway = gateway
        self.targets_path = targets_path

    @abstractmethod
    def refresh(self) -> list[Target]:
        """Fetch the newest metadata and return this device's Targets; on failure keep the old."""

    def trusted_targets(self) -> list[Target]:
        """The Targets of the metadata last kept (no network)."""
        targets = self._held()
        return parse_targets(targets, self.config.hardware_id) if targets else []

    def targets_version(self) -> int | None:
        """The version of the targets metadata kept (None before the first refresh)."""
        targets = self._held()
        return targets.version if targets else None

    def _held(self) -> Targets | None:
        try:
            data = self.targets_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return load(Targets, data).signed
        except FlavourError as exc:
            raise MetadataUpdateError(f"{self.targets_path} cannot be read: {exc}") from exc

    def _failed(self, exc: Exception) -> FioupFlowError:
        """A failed refresh as MetadataUpdateError (20), but a full disk as NoSpaceError (41):
        nothing is wrong with the metadata then."""
        if exit_code_of(exc) == NoSpaceError.exit_code:
            return NoSpaceError(f"the disk holding {self.targets_path.parent} is full while saving TUF metadata: "
                                f"free some space, then try again")
        return MetadataUpdateError(f"TUF metadata update failed: {type(exc).__name__}: {exc}")


class TufClient(TargetsSource):
    """The device's Targets verified with TUF: metadata kept in `<storage.path>/tuf`, the first
    root from the OS image's roots folder (`storage.uptane_metadata_path`, CI or production by
    the device certificate). See `fioup_flow.tuf`."""

    trust = "TUF (signatures, versions and expiry verified)"

    def __init__(self, config: Config, gateway: GatewayClient):
        super().__init__(config, gateway, config.tuf_dir / "targets.json")

    def refresh(self) -> list[Target]:
        """Download and verify the newest metadata; on any failure what was trusted stays."""
        roots_dir, cert = self.config.tuf_roots_path, self.config.client_cert
        updater = Updater(self.config.tuf_dir, self._fetch, lambda: shipped_chain(roots_dir, is_production(cert)))
        try:
            updater.refresh()
        except (RepositoryError, DownloadError, GatewayError, OSError, ValueError) as exc:
            raise self._failed(exc) from exc
        return self.trusted_targets()

    def _fetch(self, name: str, max_length: int) -> bytes | None:
        """`/repo/<name>` through the gateway (mutual TLS, x-ats-tags), at most `max_length`
        bytes; None when the gateway has no such file."""
        try:
            response = self.gateway.request("GET", f"repo/{name}", stream=True)
        except GatewayError as exc:
            if exc.status_code in (403, 404):
                return None
            raise
        data = bytearray()
        for chunk in response.iter_content(chunk_size=16384):
            data += chunk
            if len(data) > max_length:
                response.close()
                raise DownloadLengthMismatchError(f"{name} is longer than {max_length} bytes")
        return bytes(data)


class PlainClient(TargetsSource):
    """fioup's default ("plain") mode: `/repo/targets.json` over mutual TLS, read without any
    signature, version or expiry check (fioup `pkg/target/plain_repo.go`), kept where fioup
    keeps it (`<storage.path>/targets.json`). Only TLS vouches for it."""

    trust = "TLS only (plain mode; TUF signatures not verified)"

    def __init__(self, config: Config, gateway: GatewayClient):
        super().__init__(config, gateway, config.storage_path / "targets.json")

    def refresh(self) -> list[Target]:
        try:
            data = self.gateway.request("GET", "repo/targets.json").content
            load(Targets, data)
            write_atomic(self.targets_path, data)
        except (FlavourError, GatewayError, OSError) as exc:
            raise self._failed(exc) from exc
        return self.trusted_targets()


def targets_source(config: Config, gateway: GatewayClient) -> TargetsSource:
    """TUF unless the device is configured for fioup's plain mode (`pacman.tuf_mode = "plain"`)."""
    return PlainClient(config, gateway) if config.tuf_mode == "plain" else TufClient(config, gateway)
