"""Where the local factory keeps its state: one folder (`--home DIR`), laid out here only.

Every module of the factory takes a `FactoryHome` and asks it for paths, so the layout is
written down once and a factory can be inspected, backed up or wiped as a single folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fioup_flow.durable import write_atomic
from fioup_flow.errors import FioupFlowError


class FactoryHomeError(FioupFlowError):
    """The factory home cannot be used as it is (made by another version, say)."""


@dataclass(frozen=True)
class FactoryHome:
    root: Path

    # --- the factory's own settings: name, ports, registration token ---------------------
    @property
    def state_file(self) -> Path:
        """`factory.json`: name, ports, registration token; written once by `up`."""
        return self.root / "factory.json"

    def load_state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())

    def save_state(self, state: dict[str, Any]) -> None:
        write_atomic(self.state_file, json.dumps(state, indent=2, sort_keys=True).encode(), mode=0o600)

    # --- PKI ---------------------------------------------------------------------------
    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def ca_cert(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.pki / "ca.key"

    @property
    def public_ca_cert(self) -> Path:
        """The CA standing for the Web PKI: it signs the registries' and the blob storage's certificates."""
        return self.pki / "public-ca.crt"

    @property
    def public_ca_key(self) -> Path:
        return self.pki / "public-ca.key"

    @property
    def public_ca_bundle(self) -> Path:
        """The system's CA bundle plus the public CA: what `SSL_CERT_FILE` names for a device of
        this factory, as a real device's system store holds the Web PKI's roots."""
        return self.pki / "system-plus-public-ca.crt"

    def server_cert(self, name: str) -> Path:
        """TLS certificate of a server: `gateway`, `api`, `registry`, `thirdparty` or `storage`."""
        return self.pki / f"{name}.crt"

    def server_key(self, name: str) -> Path:
        return self.pki / f"{name}.key"

    @property
    def token_signer_cert(self) -> Path:
        """Certificate of the key that signs registry bearer tokens (the registry trusts the CA)."""
        return self.pki / "token-signer.crt"

    @property
    def token_signer_key(self) -> Path:
        return self.pki / "token-signer.key"

    # --- TUF repository ------------------------------------------------------------------
    @property
    def tuf(self) -> Path:
        return self.root / "tuf"

    @property
    def tuf_keys(self) -> Path:
        return self.tuf / "keys"

    def tuf_roots(self, repo: str) -> Path:
        """Every root version of repository `repo` (`ci` or `prod`), `<N>.root.json`."""
        return self.tuf / repo / "root"

    @property
    def tuf_targets_db(self) -> Path:
        """The unsigned master lists of targets (CI and production) and the version counter."""
        return self.tuf / "targets.json"

    def tuf_views(self, repo: str) -> Path:
        """Signed targets/snapshot/timestamp of repository `repo` per set of tags, served as files."""
        return self.tuf / repo / "views"

    @property
    def tuf_lock(self) -> Path:
        return self.tuf / "lock"

    # --- registry ------------------------------------------------------------------------
    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def registry_config(self) -> Path:
        return self.registry / "config.yml"

    @property
    def registry_data(self) -> Path:
        return self.registry / "data"

    @property
    def thirdparty(self) -> Path:
        """The second registry, standing for a third party's (Docker Hub, say)."""
        return self.root / "thirdparty"

    @property
    def thirdparty_config(self) -> Path:
        return self.thirdparty / "config.yml"

    @property
    def thirdparty_data(self) -> Path:
        return self.thirdparty / "data"

    # --- devices: registrations and everything they report -------------------------------
    @property
    def devices(self) -> Path:
        return self.root / "devices"

    def device_dir(self, uuid: str) -> Path:
        return self.devices / uuid

    @property
    def devices_lock(self) -> Path:
        """Held while registering, so two devices cannot take the same name."""
        return self.devices / ".lock"

    # --- processes -----------------------------------------------------------------------
    @property
    def run(self) -> Path:
        return self.root / "run"

    def pid_file(self, service: str) -> Path:
        return self.run / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.root / "logs" / f"{service}.log"

