"""Helpers for tests against a real local factory (the session `factory` fixture, in
tests/conftest.py, is built from them).

`start_factory` runs `fioup-flow-factory up` in a folder; tests that change the TUF
repository's keys or expiries start their own factory instead of the shared one.
`register_device` registers through the real api listener and returns what a device keeps
(key, client cert) beside what its OS image ships (the factory's TUF roots and a config
drop-in pointing at them).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

import requests
from support import image_roots

from fioup_flow.factory.home import FactoryHome
from fioup_flow.register import Registration, make_key_and_csr, request_body

FACTORY_CLI = [sys.executable, "-m", "fioup_flow.factory.cli"]


@dataclass(frozen=True)
class Factory:
    home: FactoryHome
    info: dict  # what `up` printed

    @property
    def gateway(self) -> str:
        return self.info["gateway"]

    @property
    def api(self) -> str:
        return self.info["api"]


@dataclass(frozen=True)
class Device:
    name: str
    uuid: str
    folder: Path
    files: dict[str, str]  # the registration answer
    drop_in: Path  # the image's config: where its TUF roots are

    @property
    def cert(self) -> tuple[str, str]:
        """(client cert, key) for requests' `cert=`."""
        return str(self.folder / "client.pem"), str(self.folder / "pkey.pem")


def factory_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*FACTORY_CLI, *args], capture_output=True, text=True, check=check, timeout=60)


def start_factory(home_dir: Path, *extra: str) -> Factory:
    result = factory_cli("up", "--home", str(home_dir), *extra)
    return Factory(FactoryHome(home_dir.resolve()), json.loads(result.stdout))


def stop_factory(factory: Factory) -> None:
    factory_cli("down", "--home", str(factory.home.root), check=False)


def registration_body(name: str, device_uuid: str, csr: bytes, sota_dir: Path, hardware_id: str = "amd64-linux",
                      tags: str = "main", apps: str | None = None) -> dict:
    """The body `fioup-flow register` (as fioup) sends."""
    reg = Registration(server="", token="", factory="", hardware_id=hardware_id, sota_dir=sota_dir, name=name,
                       tags=tuple(tags.split(",")), apps=tuple(apps.split(",")) if apps is not None else None,
                       device_uuid=device_uuid)
    return request_body(reg, csr)


def register_device(factory: Factory, folder: Path, name: str | None = None, hardware_id: str = "amd64-linux",
                    tags: str = "main", production: bool = False) -> Device:
    device_uuid = str(uuidlib.uuid4())
    name = name or f"dev-{device_uuid[:8]}"
    key, csr = make_key_and_csr(device_uuid, factory.info["factory"], production)
    response = requests.post(f"{factory.api}/ota/devices/", verify=factory.info["ca"],
                             headers={"OSF-TOKEN": factory.info["registration_token"]},
                             json=registration_body(name, device_uuid, csr, folder, hardware_id, tags), timeout=30)
    assert response.status_code == 201, response.text
    files = response.json()
    folder.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(content)
    (folder / "pkey.pem").write_bytes(key)
    image = image_roots(factory.home.root, folder.with_name(f"{folder.name}-image"))
    return Device(name, device_uuid, folder, files, image)
