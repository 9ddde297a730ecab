"""Registering a device with its factory: key, CSR, registration call, files, first contact.

Follows fioup's registration (`internal/register`): an ECDSA P-256 key and a CSR whose common
name is the device UUID; the factory answers with the files the device needs (`sota.toml`,
`client.pem`, `root.crt`; never a TUF root, which comes with the OS image), which are written atomically;
then a `PUT /system_info` over mutual TLS proves the link works.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fioup_flow.config import Config
from fioup_flow.durable import make_dirs, write_atomic
from fioup_flow.errors import RegistrationError
from fioup_flow.gateway import GatewayClient, GatewayError
from fioup_flow.sysinfo import system_info
from fioup_flow.tls import USER_AGENT

log = logging.getLogger(__name__)

REGISTRATION_PATH = "ota/devices/"
# Files that mark a device as registered; `--force` is needed to replace them.
REGISTERED_MARKERS = ("sota.toml", "client.pem")
PRIVATE_FILES = {"pkey.pem"}


def default_hardware_id() -> str:
    """fioup's default: `arm64-linux` on 64-bit ARM, `amd64-linux` elsewhere."""
    return "arm64-linux" if platform.machine() in ("aarch64", "arm64") else "amd64-linux"


@dataclass(frozen=True)
class Registration:
    server: str
    token: str
    name: str
    hardware_id: str
    sota_dir: Path
    tags: tuple[str, ...] = ("main",)
    apps: tuple[str, ...] | None = None
    ca_file: Path | None = None
    device_uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))


def toml_quoted(value: str) -> str:
    """fioup sends override values already quoted for TOML."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_key_and_csr(device_uuid: str) -> tuple[bytes, bytes]:
    """A fresh P-256 key (PEM, PKCS#8) and a CSR naming the device by its UUID."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_uuid)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def request_body(reg: Registration, csr_pem: bytes) -> dict:
    pacman = {"tags": toml_quoted(",".join(reg.tags))}
    if reg.apps is not None:
        pacman["compose_apps"] = toml_quoted(",".join(reg.apps))
    return {
        "name": reg.name,
        "uuid": reg.device_uuid,
        "csr": csr_pem.decode(),
        "hardware-id": reg.hardware_id,
        "sota-config-dir": str(reg.sota_dir),
        "overrides": {"pacman": pacman},
    }


def check_not_registered(sota_dir: Path, force: bool) -> None:
    present = [name for name in REGISTERED_MARKERS if (sota_dir / name).exists()]
    if present and not force:
        raise RegistrationError(
            f"this device is registered already ({', '.join(str(sota_dir / p) for p in present)} exist); "
            "use --force to register it again as a new device"
        )


def call_registration(reg: Registration, body: dict) -> dict[str, str]:
    """POST the registration; the answer maps file names (relative to the sota dir) to contents."""
    url = f"{reg.server.rstrip('/')}/{REGISTRATION_PATH}"
    try:
        response = requests.post(
            url,
            json=body,
            headers={"OSF-TOKEN": reg.token, "User-Agent": USER_AGENT},
            verify=str(reg.ca_file) if reg.ca_file else True,
            timeout=(10, 60),
        )
    except requests.RequestException as exc:
        raise RegistrationError(f"cannot reach the registration service at {url}: {exc}") from exc
    if response.status_code == 401:
        raise RegistrationError("the factory refused the registration token (401)")
    if response.status_code == 409:
        raise RegistrationError(f"the factory has a device named {reg.name!r} already (409); choose another --name")
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
    write_atomic(sota_dir / "pkey.pem", key_pem, mode=0o600)
    for name in sorted(files, key=lambda n: n == "sota.toml"):
        relative = safe_relative(name)
        mode = 0o600 if relative.name in PRIVATE_FILES else 0o644
        write_atomic(sota_dir / relative, files[name].encode(), mode=mode)


def register(reg: Registration, force: bool = False) -> Config:
    """Register the device, write its files, and prove the mutual-TLS link; returns the new config."""
    make_dirs(reg.sota_dir)
    os.chmod(reg.sota_dir, 0o700)
    check_not_registered(reg.sota_dir, force)
    if force:
        # A new identity starts from the roots its image ships, not from metadata trusted before.
        shutil.rmtree(reg.sota_dir / "tuf", ignore_errors=True)
    key_pem, csr_pem = make_key_and_csr(reg.device_uuid)
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
