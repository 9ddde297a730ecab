"""Registering a device with its factory: key, CSR, registration call, files, first contact.

Follows fioup's registration (`internal/register`, `cmd/fioup/register.go`):
- the factory must be named (`--factory`); an empty name or `lmp` is refused;
- an ECDSA P-256 key (written as an `EC PRIVATE KEY`) and a CSR whose subject is `OU=<factory>`,
  `CN=<device uuid>`, plus `businessCategory=production` for a production device (`--production`
  or `$PRODUCTION` set), which is what makes the device trust production TUF metadata;
- `POST` to the registration endpoint (`$DEVICE_API`, default api.foundries.io's
  `/ota/devices/`) with the token in `OSF-TOKEN` and the body fioup sends: name, uuid, csr,
  hardware-id, sota-config-dir, `use-ostree-server: "true"`, the device group if given, and the
  `sota.toml` overrides of `[pacman]` (type, reset_apps_root, compose_apps_root, tags, and the
  apps if given), each value already quoted for TOML, as the server pastes them in;
- the answer maps file names to contents (`sota.toml`, `client.pem`, `root.crt`, ...; never a TUF
  root, which comes with the OS image); each is
  written, like `pkey.pem`, atomically with mode 0600, the sota dir being 0700;
- then a `PUT /system_info` over mutual TLS proves the link works.
fioup-flow takes only the API token (fioup can also run an OAuth device flow against
app.foundries.io), and `--ca` pins the registration service's CA (default: the system's store).
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fioup_flow.config import Config
from fioup_flow.durable import make_dirs, write_atomic
from fioup_flow.errors import RegistrationError, UsageError
from fioup_flow.gateway import GatewayClient, GatewayError
from fioup_flow.sysinfo import system_info
from fioup_flow.tls import PinnedCASession, SystemTrustSession

log = logging.getLogger(__name__)

DEFAULT_DEVICE_API = "https://api.foundries.io/ota/devices/"
REGISTRATION_PATH = "ota/devices/"
PRODUCTION = "production"  # the businessCategory of a production device's certificate
# Files that mark a device as registered; `--force` is needed to replace them.
REGISTERED_MARKERS = ("sota.toml", "client.pem")
FILE_MODE = 0o600  # fioup writes every file of the sota dir, key or not, with mode 0600


def default_hardware_id() -> str:
    """fioup's default: `arm64-linux` on 64-bit ARM, `amd64-linux` elsewhere."""
    return "arm64-linux" if platform.machine() in ("aarch64", "arm64") else "amd64-linux"


def registration_url(server: str) -> str:
    """The endpoint to POST to: `server` as given (fioup's `DEVICE_API`), or, for a bare
    `https://host[:port]`, that service's `/ota/devices/`."""
    if urlsplit(server).path.strip("/"):
        return server
    return f"{server.rstrip('/')}/{REGISTRATION_PATH}"


def check_factory(factory: str) -> str:
    """fioup refuses a registration without a factory, and the placeholder `lmp`."""
    if not factory or factory == "lmp":
        raise UsageError(f"--factory names the factory to register with (got {factory!r})")
    return factory


def check_uuid(device_uuid: str | None) -> str:
    """The UUID given (checked, as fioup's `--uuid`), or a new one (UUID v4)."""
    if device_uuid is None:
        return str(uuidlib.uuid4())
    try:
        return str(uuidlib.UUID(device_uuid))
    except ValueError as exc:
        raise UsageError(f"invalid UUID: {device_uuid}") from exc


@dataclass(frozen=True)
class Registration:
    server: str
    token: str
    factory: str
    hardware_id: str
    sota_dir: Path
    name: str | None = None  # default: the uuid, as fioup
    tags: tuple[str, ...] = ("main",)
    apps: tuple[str, ...] | None = None
    device_group: str | None = None
    production: bool = False
    ca_file: Path | None = None
    token_header: str = "OSF-TOKEN"
    device_uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))

    @property
    def device_name(self) -> str:
        return self.name or self.device_uuid


def toml_quoted(value: str) -> str:
    """fioup sends override values already quoted for TOML."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def csr_subject(device_uuid: str, factory: str, production: bool) -> x509.Name:
    """fioup's CSR subject: OU = factory, CN = uuid, and businessCategory for production."""
    attributes = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, factory),
                  x509.NameAttribute(NameOID.COMMON_NAME, device_uuid)]
    if production:
        attributes.append(x509.NameAttribute(NameOID.BUSINESS_CATEGORY, PRODUCTION))
    return x509.Name(attributes)


def make_key_and_csr(device_uuid: str, factory: str, production: bool = False) -> tuple[bytes, bytes]:
    """A fresh P-256 key (PEM, `EC PRIVATE KEY` as fioup writes it) and the device's CSR."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(csr_subject(device_uuid, factory, production))
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def request_body(reg: Registration, csr_pem: bytes) -> dict:
    """The body fioup's `getDeviceInfo` makes."""
    pacman = {
        "type": toml_quoted("ostree+compose_apps"),
        "reset_apps_root": toml_quoted(str(reg.sota_dir / "reset-apps")),
        "compose_apps_root": toml_quoted(str(reg.sota_dir / "compose-apps")),
        "tags": toml_quoted(",".join(reg.tags)),
    }
    if reg.apps is not None:
        pacman["compose_apps"] = toml_quoted(",".join(reg.apps))
    body = {
        "use-ostree-server": "true",
        "sota-config-dir": str(reg.sota_dir),
        "hardware-id": reg.hardware_id,
        "name": reg.device_name,
        "uuid": reg.device_uuid,
        "csr": csr_pem.decode(),
        "overrides": {"pacman": pacman},
    }
    if reg.device_group:
        body["group"] = reg.device_group
    return body


def check_not_registered(sota_dir: Path, force: bool) -> None:
    present = [name for name in REGISTERED_MARKERS if (sota_dir / name).exists()]
    if present and not force:
        raise RegistrationError(
            f"this device is registered already ({', '.join(str(sota_dir / p) for p in present)} exist); "
            "use --force to register it again as a new device"
        )


def call_registration(reg: Registration, body: dict) -> dict[str, str]:
    """POST the registration; the answer maps file names (relative to the sota dir) to contents."""
    url = registration_url(reg.server)
    session = PinnedCASession(reg.ca_file) if reg.ca_file else SystemTrustSession()
    try:
        response = session.post(url, json=body, headers={reg.token_header: reg.token}, timeout=(10, 60))
    except requests.RequestException as exc:
        raise RegistrationError(f"cannot reach the registration service at {url}: {exc}") from exc
    if response.status_code == 401:
        raise RegistrationError("the factory refused the registration token (401)")
    if response.status_code == 409:
        raise RegistrationError(f"the factory has a device named {reg.device_name!r} already (409); "
                                "choose another --name")
    if response.status_code != 201:
        raise RegistrationError(f"registration failed: {response.status_code} {response.text.strip()[:300]}")
    try:
        files = response.json()
    except ValueError as exc:
        raise RegistrationError("the registration answer is not JSON") from exc
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise RegistrationError("the registration answer is not a map of file names to contents")
    return files


def safe_relative(name: str) -> PurePosixPath:
    """A file name from the server, refused if it could escape the sota dir."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise RegistrationError(f"the registration answer names an unsafe file path: {name!r}")
    return path


def write_files(sota_dir: Path, files: dict[str, str], key_pem: bytes) -> None:
    """Write the key first and `sota.toml` last, so a crash never leaves a config without its key."""
    write_atomic(sota_dir / "pkey.pem", key_pem, mode=FILE_MODE)
    for name in sorted(files, key=lambda n: n == "sota.toml"):
        write_atomic(sota_dir / safe_relative(name), files[name].encode(), mode=FILE_MODE)


def register(reg: Registration, force: bool = False) -> Config:
    """Register the device, write its files, and prove the mutual-TLS link; returns the new config."""
    make_dirs(reg.sota_dir)
    os.chmod(reg.sota_dir, 0o700)
    check_not_registered(reg.sota_dir, force)
    if force:
        # A new identity starts from the roots its image ships, not from metadata trusted before.
        shutil.rmtree(reg.sota_dir / "tuf", ignore_errors=True)
    key_pem, csr_pem = make_key_and_csr(reg.device_uuid, reg.factory, reg.production)
    files = call_registration(reg, request_body(reg, csr_pem))
    if "sota.toml" not in files or "client.pem" not in files:
        raise RegistrationError("the registration answer lacks sota.toml or client.pem")
    write_files(reg.sota_dir, files, key_pem)
    config = Config.load((str(reg.sota_dir / "sota.toml"),))
    try:
        GatewayClient(config, retry_seconds=20).put_json("system_info", system_info())
    except GatewayError as exc:
        raise RegistrationError(f"registered, but the Device Gateway check failed: {exc}") from exc
    return config
