"""`fioup-flow register` registers as fioup does (`internal/register`), checked at the factory.

What the factory received is read from its own record of the request (`registration.json`),
and the certificate it issued keeps the CSR's subject, so the subject fioup-flow asked for is
the one on `client.pem`.
"""

from __future__ import annotations

import os
import stat
import uuid as uuidlib

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from support import fioup_flow, register

from fioup_flow.config import Config
from fioup_flow.factory.devices import DeviceRecords

pytestmark = pytest.mark.factory


def subject(path) -> dict[str, list[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = {NameOID.COMMON_NAME: "CN", NameOID.ORGANIZATIONAL_UNIT_NAME: "OU", NameOID.BUSINESS_CATEGORY: "BC"}
    return {names.get(a.oid, a.oid.dotted_string): [v.value for v in cert.subject.get_attributes_for_oid(a.oid)]
            for a in cert.subject}


def registered(factory, done, name: str) -> dict:
    assert done.returncode == 0, done.stderr
    records = DeviceRecords(factory.home)
    return records.registration(records.find(name)["uuid"])


def test_the_certificate_names_the_factory_and_the_device_and_the_body_is_fioup_s(factory, tmp_path) -> None:
    sota, name = tmp_path / "sota", f"plain-{uuidlib.uuid4().hex[:6]}"
    request = registered(factory, register(factory.info, sota, name, "--tag", "t1"), name)
    assert subject(sota / "client.pem") == {"OU": [factory.info["factory"]], "CN": [request["uuid"]]}
    assert set(request) == {"name", "uuid", "csr", "hardware-id", "sota-config-dir", "use-ostree-server", "overrides"}
    assert request["use-ostree-server"] == "true" and request["sota-config-dir"] == str(sota)
    assert request["overrides"] == {"pacman": {
        "type": '"ostree+compose_apps"', "reset_apps_root": f'"{sota}/reset-apps"',
        "compose_apps_root": f'"{sota}/compose-apps"', "tags": '"t1"'}}
    config = Config.load((str(sota / "sota.toml"),))  # the factory wrote the overrides in
    assert config.get("pacman", "type") == "ostree+compose_apps" and config.tags == ("t1",)
    assert (config.reset_apps_root, config.compose_apps_root) == (sota / "reset-apps", sota / "compose-apps")


def test_apps_group_and_uuid_go_as_fioup_sends_them_and_the_name_defaults_to_the_uuid(factory, tmp_path) -> None:
    device_uuid = str(uuidlib.uuid4())
    done = fioup_flow(["register", "--factory", factory.info["factory"], "--server", factory.info["api"],
                       "--token", factory.info["registration_token"], "--ca", factory.info["ca"],
                       "--uuid", device_uuid, "--apps", "shellhttpd,pair", "--device-group", "lab",
                       "--sota-dir", str(tmp_path / "sota")])
    request = registered(factory, done, device_uuid)
    assert request["name"] == request["uuid"] == device_uuid
    assert request["group"] == "lab" and DeviceRecords(factory.home).get(device_uuid)["group"] == "lab"
    assert request["overrides"]["pacman"]["compose_apps"] == '"shellhttpd,pair"'


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_production_device_says_so_in_its_certificate(factory, tmp_path, how: str) -> None:
    sota = tmp_path / "sota"
    name = f"prod-{how}-{uuidlib.uuid4().hex[:6]}"
    if how == "flag":
        done = register(factory.info, sota, name, "--production")
    else:
        os.environ["PRODUCTION"] = "1"
        try:
            done = register(factory.info, sota, name)
        finally:
            del os.environ["PRODUCTION"]
    assert done.returncode == 0, done.stderr
    assert subject(sota / "client.pem")["BC"] == ["production"]


def test_every_file_is_written_private_as_fioup_writes_them(factory, tmp_path) -> None:
    sota = tmp_path / "sota"
    assert register(factory.info, sota).returncode == 0
    assert stat.S_IMODE(sota.stat().st_mode) == 0o700
    written = [p for p in sota.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"sota.toml", "client.pem", "client.chained", "root.crt", "pkey.pem"}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in written} == {p.name: 0o600 for p in written}
    assert (sota / "pkey.pem").read_text().startswith("-----BEGIN EC PRIVATE KEY-----")


@pytest.mark.parametrize("factory_flag", [[], ["--factory", "lmp"], ["--factory", ""]])
def test_without_a_real_factory_name_nothing_is_asked_nor_written(factory, tmp_path, factory_flag) -> None:
    done = fioup_flow(["register", *factory_flag, "--server", factory.info["api"],
                       "--token", factory.info["registration_token"], "--ca", factory.info["ca"],
                       "--sota-dir", str(tmp_path / "sota")])
    assert done.returncode == 2 and "factory" in done.stderr
    assert not (tmp_path / "sota").exists()


def test_a_device_that_names_another_factory_is_refused_by_the_factory(factory, tmp_path) -> None:
    done = register(factory.info, tmp_path / "sota", None, "--factory", "someone-else")
    assert done.returncode == 6
    assert f"Invalid factory(someone-else) must be {factory.info['factory']}" in done.stderr
    assert not (tmp_path / "sota" / "sota.toml").exists()


def test_the_registration_endpoint_may_come_from_device_api_as_for_fioup(factory, tmp_path) -> None:
    done = fioup_flow(["register", "--factory", factory.info["factory"], "--token", factory.info["registration_token"],
                       "--ca", factory.info["ca"], "--sota-dir", str(tmp_path / "sota")],
                      env={"DEVICE_API": f"{factory.info['api']}/ota/devices/"})
    assert done.returncode == 0, done.stderr
