"""The factory-server against real clients: mTLS gateway, registration, reports, registry tokens, TUF.

Everything goes over HTTPS on loopback to a factory started with `fioup-flow-factory up`. The
TUF views are verified with the device's own verifier (fioup_flow.tuf) through an mTLS fetch.
"""

from __future__ import annotations

import datetime
import json
import tomllib
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import pytest
import requests
from core_factory import (
    Device,
    Factory,
    factory_cli,
    register_device,
    registration_body,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fioup_flow.factory.devices import DeviceRecords
from fioup_flow.factory.faults import Faults
from fioup_flow.factory.pki import issue_client_cert
from fioup_flow.factory.token import SERVICE
from fioup_flow.factory.tufrepo import CI, PRODUCTION, TufRepository
from fioup_flow.register import make_key_and_csr
from fioup_flow.tuf.roots import is_production, shipped_chain
from fioup_flow.tuf.updater import Updater

REFUSED = (requests.exceptions.SSLError, requests.exceptions.ConnectionError)


def _get(factory: Factory, device: Device, path: str, **kwargs) -> requests.Response:
    return requests.get(f"{factory.gateway}{path}", cert=device.cert, verify=factory.info["ca"], timeout=30, **kwargs)


def _send(factory: Factory, device: Device, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, f"{factory.gateway}{path}", cert=device.cert, verify=factory.info["ca"],
                            timeout=30, **kwargs)


@pytest.fixture()
def device(factory, tmp_path) -> Device:
    return register_device(factory, tmp_path / "sota")


# --- the gateway's mutual TLS ----------------------------------------------------------------

def test_the_gateway_refuses_a_client_without_a_certificate(factory):
    with pytest.raises(REFUSED):
        requests.get(f"{factory.gateway}/device", verify=factory.info["ca"], timeout=10)


def _foreign_client_cert(folder: Path, cn: str) -> tuple[str, str]:
    """A client certificate from a CA the factory has never seen."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another CA")])
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "foreign.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "foreign.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return str(folder / "foreign.pem"), str(folder / "foreign.key")


def test_the_gateway_refuses_a_certificate_from_another_ca(factory, device, tmp_path):
    with pytest.raises(REFUSED):
        requests.get(f"{factory.gateway}/device", cert=_foreign_client_cert(tmp_path / "x", device.uuid),
                     verify=factory.info["ca"], timeout=10)


def test_the_gateway_answers_401_to_a_valid_certificate_of_an_unregistered_device(factory, tmp_path):
    key, csr = make_key_and_csr(str(uuidlib.uuid4()), factory.info["factory"])
    (tmp_path / "c.pem").write_bytes(issue_client_cert(factory.home, csr))
    (tmp_path / "k.pem").write_bytes(key)
    response = requests.get(f"{factory.gateway}/device", cert=(str(tmp_path / "c.pem"), str(tmp_path / "k.pem")),
                            verify=factory.info["ca"], timeout=10)
    assert response.status_code == 401


def test_the_gateway_tells_a_device_who_it_is_and_records_when_it_was_last_seen(factory, device):
    before = DeviceRecords(factory.home).get(device.uuid)["last_seen"]
    whoami = _get(factory, device, "/device").json()
    assert whoami["uuid"] == device.uuid and whoami["name"] == device.name
    assert whoami["factory"] == factory.info["factory"] and whoami["tag"] == "main"
    assert "PUBLIC KEY" in whoami["pubkey"] and whoami["last_seen"] >= whoami["created_at"]
    assert DeviceRecords(factory.home).get(device.uuid)["last_seen"] > before


# --- registration ------------------------------------------------------------------------------

def _register(factory: Factory, body: dict, token: str | None) -> requests.Response:
    headers = {"OSF-TOKEN": token} if token is not None else {}
    return requests.post(f"{factory.api}/ota/devices/", json=body, headers=headers, verify=factory.info["ca"],
                         timeout=30)


def _body(tmp_path: Path, name: str | None = None, device_uuid: str | None = None, factory_name: str = "factory",
          **kwargs) -> dict:
    """A registration body as fioup sends it, for the session's factory (named `factory`)."""
    device_uuid = device_uuid or str(uuidlib.uuid4())
    _, csr = make_key_and_csr(device_uuid, factory_name)
    return registration_body(name or f"n-{device_uuid[:8]}", device_uuid, csr, tmp_path, **kwargs)


def test_registration_with_a_wrong_or_missing_token_is_refused_with_401(factory, tmp_path):
    assert _register(factory, _body(tmp_path), "wrong").status_code == 401
    assert _register(factory, _body(tmp_path), None).status_code == 401


def test_registration_returns_the_device_files_and_records_the_device(factory, tmp_path):
    body = _body(tmp_path, hardware_id="rpi4-linux", tags="main,devel", apps="shellhttpd,pair")
    response = _register(factory, body, factory.info["registration_token"])
    assert response.status_code == 201
    files = response.json()
    assert set(files) == {"sota.toml", "client.pem", "client.chained", "root.crt"}, "no TUF root: it comes with the OS image"
    sota = tomllib.loads(files["sota.toml"])
    port = factory.home.load_state()["ports"]["gateway"]
    assert sota["tls"] == {"server": f"https://127.0.0.1:{port}", "ca_source": "file", "pkey_source": "file",
                           "cert_source": "file"}
    assert sota["provision"] == {"primary_ecu_hardware_id": "rpi4-linux"}
    assert sota["uptane"] == {"repo_server": f"https://127.0.0.1:{port}/repo", "polling_seconds": "300"}
    assert sota["pacman"] == {"type": "ostree+compose_apps", "tags": "main,devel", "compose_apps": "shellhttpd,pair",
                              "reset_apps_root": f"{tmp_path}/reset-apps",
                              "compose_apps_root": f"{tmp_path}/compose-apps"}
    assert sota["storage"] == {"path": str(tmp_path)}
    assert sota["import"]["tls_clientcert_path"] == f"{tmp_path}/client.pem"
    assert files["root.crt"] == factory.home.ca_cert.read_text()
    cert = x509.load_pem_x509_certificate(files["client.pem"].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == body["uuid"]
    record = DeviceRecords(factory.home).find(body["name"])
    assert record["uuid"] == body["uuid"] and record["hardware_id"] == "rpi4-linux"
    assert record["tags"] == ["main", "devel"]


def test_registration_without_compose_apps_leaves_them_out_of_sota_toml(factory, tmp_path):
    response = _register(factory, _body(tmp_path), factory.info["registration_token"])
    assert "compose_apps" not in tomllib.loads(response.json()["sota.toml"])["pacman"]


def test_the_devices_command_lists_registered_devices_without_their_secrets(factory, device):
    listed = [json.loads(line) for line in factory_cli("devices", "--home", str(factory.home.root)).stdout.splitlines()]
    mine = next(d for d in listed if d["uuid"] == device.uuid)
    assert mine["name"] == device.name and "registry_secret" not in mine


def test_registering_a_taken_name_or_uuid_is_refused_with_409(factory, device, tmp_path):
    token = factory.info["registration_token"]
    assert _register(factory, _body(tmp_path, name=device.name), token).status_code == 409
    assert _register(factory, _body(tmp_path, device_uuid=device.uuid), token).status_code == 409


def test_a_malformed_registration_is_refused_with_400(factory, tmp_path):
    token = factory.info["registration_token"]
    body = _body(tmp_path)
    assert _register(factory, {k: v for k, v in body.items() if k != "csr"}, token).status_code == 400
    assert _register(factory, body | {"csr": "garbage"}, token).status_code == 400
    assert _register(factory, body | {"uuid": str(uuidlib.uuid4())}, token).status_code == 400  # CN != uuid
    response = requests.post(f"{factory.api}/ota/devices/", data=b"{", headers={"OSF-TOKEN": token},
                             verify=factory.info["ca"], timeout=30)
    assert response.status_code == 400


# --- what devices report ----------------------------------------------------------------------

def _event(event_id: str, kind: str) -> dict:
    return {"id": event_id, "deviceTime": "2026-01-01T00:00:00Z", "eventType": {"id": kind, "version": 2},
            "event": {"correlationId": "c1", "success": True, "targetName": "t", "version": "1", "details": ""}}


def test_events_are_recorded_once_each_even_when_a_batch_is_sent_again(factory, device):
    first, second, third = _event("e1", "UpdateInitStarted"), _event("e2", "UpdateInitCompleted"), _event("e3", "X")
    assert _send(factory, device, "POST", "/events", json=[first, second]).status_code == 200
    assert _send(factory, device, "POST", "/events", json=[second, third]).status_code == 200
    assert _send(factory, device, "POST", "/events", json=[first]).status_code == 200
    assert [e["id"] for e in DeviceRecords(factory.home).events(device.uuid)] == ["e1", "e2", "e3"]
    printed = factory_cli("events", "--home", str(factory.home.root), "--device", device.name).stdout
    assert [json.loads(line)["id"] for line in printed.splitlines()] == ["e1", "e2", "e3"]


def test_events_that_are_not_a_list_are_refused_with_400(factory, device):
    assert _send(factory, device, "POST", "/events", json={"id": "e1"}).status_code == 400


def test_reports_are_judged_as_the_real_gateway_judges_them(factory, device):
    """dg-satellite: 400 when a body does not decode into its Go types, 413 over 100 KiB, and events
    without an id or with an invalid correlation id skipped while the upload succeeds."""
    wrong_type = dict(_event("w1", "X"), eventType={"id": "X", "version": "2"})
    assert _send(factory, device, "POST", "/events", json=[_event("ok1", "X"), wrong_type]).status_code == 400
    skipped = [dict(_event("", "X")), dict(_event("s2", "X"), event={"correlationId": "bad id!"})]
    assert _send(factory, device, "POST", "/events", json=[*skipped, _event("ok2", "X")]).status_code == 200
    assert [e["id"] for e in DeviceRecords(factory.home).events(device.uuid)] == ["ok2"]
    too_big = [dict(_event(f"b{n}", "X"), event=dict(_event("", "X")["event"], details="d" * 2048))
               for n in range(60)]
    assert _send(factory, device, "POST", "/events", json=too_big).status_code == 413
    assert _send(factory, device, "POST", "/apps-states", json={"deviceTime": "now", "apps": {}}).status_code == 400
    assert _send(factory, device, "PUT", "/system_info", data=b"not json").status_code == 400
    assert _send(factory, device, "PUT", "/system_info/network", json={"mac": 1}).status_code == 400


def test_the_gateway_records_the_check_in_headers_of_each_request(factory, device):
    headers = {"x-ats-target": "t-1", "x-ats-dockerapps": "a,b", "x-ats-tags": "main"}
    assert _get(factory, device, "/device", headers=headers).status_code == 200
    assert _get(factory, device, "/device", headers={"x-ats-target": "t-2"}).status_code == 200
    assert DeviceRecords(factory.home).get(device.uuid)["checkin"] == {"target": "t-2", "apps": "a,b", "tag": "main"}


def test_app_states_are_appended_and_readable_back(factory, device):
    states = [{"ostree": "x", "deviceTime": "2026-01-01T00:00:00Z", "apps": {}},
              {"ostree": "x", "deviceTime": "2026-01-01T00:01:00+01:00", "apps": {"a": {}}}]
    for state in states:
        assert _send(factory, device, "POST", "/apps-states", json=state).status_code == 200
    assert DeviceRecords(factory.home).apps_states(device.uuid) == states
    printed = factory_cli("events", "--home", str(factory.home.root), "--device", device.uuid,
                          "--kind", "apps-states").stdout
    assert [json.loads(line) for line in printed.splitlines()] == states


def test_system_info_keeps_the_latest_of_each_kind(factory, device):
    records = DeviceRecords(factory.home)
    for path, kind, body in (("/system_info", "", b'{"a": 1}'), ("/system_info/network", "network", b'{"mac": "1"}'),
                             ("/system_info/config", "config", b"[pacman]\n")):
        assert _send(factory, device, "PUT", path, data=b'{"old": 1}').status_code == 200
        assert _send(factory, device, "PUT", path, data=body).status_code == 200
        assert records.system_info(device.uuid, kind) == body


def test_config_has_nothing_for_the_device(factory, device):
    assert _get(factory, device, "/config").status_code == 204


def test_a_burst_of_server_errors_answers_the_next_requests_with_that_status_then_ends(factory, device):
    faults = Faults(factory.home)
    faults.set(http_errors=2, http_status=502)
    try:
        statuses = [_get(factory, device, "/device").status_code for _ in range(3)]
    finally:
        faults.clear()
    assert statuses == [502, 502, 200]


def test_unknown_gateway_paths_are_404(factory, device):
    assert _get(factory, device, "/nothing").status_code == 404
    assert _get(factory, device, "/repo/99.root.json", headers={"x-ats-tags": "main"}).status_code == 404


# --- registry credentials and tokens ----------------------------------------------------------

def _token(factory: Factory, auth: tuple[str, str] | None, scope: str) -> requests.Response:
    return requests.get(f"{factory.api}/token", params={"service": SERVICE, "scope": scope}, auth=auth,
                        verify=factory.info["ca"], timeout=30)


def _claims(factory: Factory, response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    token = response.json()["token"]
    signer = x509.load_pem_x509_certificate(factory.home.token_signer_cert.read_bytes())
    return jwt.decode(token, signer.public_key(), algorithms=["ES256"], audience=SERVICE)


def test_hub_creds_are_the_device_s_registry_credentials(factory, device):
    creds = _get(factory, device, "/hub-creds/").json()
    assert creds == {"ServerURL": factory.info["registry"], "Username": device.uuid,
                     "Secret": DeviceRecords(factory.home).get(device.uuid)["registry_secret"]}


def test_a_device_gets_pull_but_never_push(factory, device):
    creds = _get(factory, device, "/hub-creds/").json()
    scope = f"repository:{factory.info['factory']}/app:pull,push"
    claims = _claims(factory, _token(factory, (creds["Username"], creds["Secret"]), scope))
    assert claims["sub"] == device.uuid
    assert claims["access"] == [{"type": "repository", "name": f"{factory.info['factory']}/app", "actions": ["pull"]}]


def test_the_publisher_gets_pull_and_push(factory):
    publisher = factory.home.load_state()["publisher"]
    scope = f"repository:{factory.info['factory']}/app:pull,push"
    claims = _claims(factory, _token(factory, (publisher["username"], publisher["secret"]), scope))
    assert claims["access"][0]["actions"] == ["pull", "push"]


def test_nobody_gets_access_outside_the_factory_s_repositories(factory):
    publisher = factory.home.load_state()["publisher"]
    claims = _claims(factory, _token(factory, (publisher["username"], publisher["secret"]), "repository:other/app:pull"))
    assert claims["access"] == [{"type": "repository", "name": "other/app", "actions": []}]


def test_wrong_or_missing_credentials_get_401(factory, device):
    scope = f"repository:{factory.info['factory']}/app:pull"
    assert _token(factory, (device.uuid, "wrong"), scope).status_code == 401
    assert _token(factory, ("publisher", "wrong"), scope).status_code == 401
    assert _token(factory, None, scope).status_code == 401


def test_the_registry_accepts_a_device_token_from_the_token_endpoint(factory, device):
    creds = _get(factory, device, "/hub-creds/").json()
    repository = f"{factory.info['factory']}/nothing-here"
    token = _token(factory, (creds["Username"], creds["Secret"]), f"repository:{repository}:pull").json()["token"]
    url = f"https://{factory.info['registry']}/v2/{repository}/tags/list"
    assert requests.get(url, verify=factory.info["public_ca"], timeout=30).status_code == 401
    authorized = requests.get(url, headers={"Authorization": f"Bearer {token}"}, verify=factory.info["public_ca"],
                              timeout=30)
    assert authorized.status_code == 404 and authorized.json()["errors"][0]["code"] == "NAME_UNKNOWN"


# --- the TUF repositories, over mutual TLS ----------------------------------------------------

def _fetcher(factory: Factory, device: Device, tags: str):
    """The device verifier's fetch over the gateway's mutual TLS, with the tags header."""
    def fetch(name: str, _max_length: int) -> bytes | None:
        response = _get(factory, device, f"/repo/{name}", headers={"x-ats-tags": tags})
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        return response.content
    return fetch


def _refresh(factory: Factory, device: Device, store: Path, tags: str = "main"):
    """What the device trusts after a refresh from the gateway, from the roots its image ships
    (CI or production by its certificate, as the agent chooses)."""
    production = is_production(device.folder / "client.pem")
    return Updater(store, _fetcher(factory, device, tags),
                   lambda: shipped_chain(device.drop_in.parent / "tuf", production)).refresh()


def _entry(version: int, hwid: str, tags: list[str]) -> dict:
    custom = {"version": str(version), "hardwareIds": [hwid], "tags": tags, "name": f"{hwid}-lmp",
              "targetFormat": "OSTREE", "arch": "x86_64", "docker_compose_apps": {}}
    return {f"{hwid}-lmp-{version}": {"length": 0, "hashes": {"sha256": "cd" * 32}, "custom": custom}}


def test_the_repository_answers_404_to_a_device_that_sends_no_tag(factory, device):
    for path in ("/repo/1.root.json", "/repo/timestamp.json", "/repo/targets.json"):
        assert _get(factory, device, path).status_code == 404
        assert _get(factory, device, path, headers={"x-ats-tags": "main"}).status_code == 200


def _own() -> str:
    """A tag or hardware id of this test's own: the shared factory's Targets are left alone."""
    return f"core-{uuidlib.uuid4().hex[:8]}"


def test_the_x_ats_tags_header_chooses_the_view_which_lists_every_hardware_id_of_its_tags(factory, tmp_path):
    tag, other, hwid, hwid2 = _own(), _own(), _own(), _own()
    device = register_device(factory, tmp_path / "sota", hardware_id=hwid, tags=tag)
    TufRepository(factory.home).add_targets(_entry(1, hwid, [tag]) | _entry(2, hwid, [other]) | _entry(3, hwid2, [tag]))
    assert set(_refresh(factory, device, tmp_path / "tuf", tag).targets) == {f"{hwid}-lmp-1", f"{hwid2}-lmp-3"}
    assert set(_refresh(factory, device, tmp_path / "tuf", other).targets) == {f"{hwid}-lmp-2"}


def test_a_production_device_gets_the_production_chain_and_only_production_targets(factory, tmp_path):
    tag, hwid = _own(), _own()
    ci = register_device(factory, tmp_path / "ci", hardware_id=hwid, tags=tag)
    prod = register_device(factory, tmp_path / "prod", hardware_id=hwid, tags=tag, production=True)
    cert = x509.load_pem_x509_certificate(prod.files["client.pem"].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.BUSINESS_CATEGORY)[0].value == "production"
    repo = TufRepository(factory.home)
    repo.add_targets(_entry(1, hwid, [tag]))
    repo.add_targets(_entry(2, hwid, [tag]), production=True)
    assert set(_refresh(factory, ci, tmp_path / "ci-tuf", tag).targets) == {f"{hwid}-lmp-1", f"{hwid}-lmp-2"}
    assert set(_refresh(factory, prod, tmp_path / "prod-tuf", tag).targets) == {f"{hwid}-lmp-2"}
    newest = repo.root_versions(PRODUCTION)[-1]
    assert _get(factory, prod, f"/repo/{newest}.root.json", headers={"x-ats-tags": tag}).content == \
        repo.root_json(PRODUCTION, newest)
    assert (tmp_path / "prod-tuf" / "root.json").read_bytes() == repo.root_json(PRODUCTION, newest)


def test_fioup_flow_factory_roots_writes_both_chains_as_an_image_ships_them(factory, device):
    roots = device.drop_in.parent / "tuf"
    repo = TufRepository(factory.home)
    for chain in (CI, PRODUCTION):
        assert sorted(int(p.name.split(".")[0]) for p in (roots / chain).iterdir()) == repo.root_versions(chain)
        assert (roots / chain / "1.root.json").read_bytes() == repo.root_json(chain, 1)


def test_events_sent_at_once_from_many_connections_are_still_recorded_once(factory, device):
    batch = [_event("c1", "EcuDownloadStarted"), _event("c2", "EcuDownloadCompleted")]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _send(factory, device, "POST", "/events", json=batch).status_code, range(16)))
    assert answers == [200] * 16
    assert [e["id"] for e in DeviceRecords(factory.home).events(device.uuid)] == ["c1", "c2"]


def test_a_body_sent_in_chunks_is_read_whole(factory, device):
    body = json.dumps([_event("k1", "EcuInstallationStarted")]).encode()
    chunks = iter([body[:10], body[10:]])  # a generator makes requests send Transfer-Encoding: chunked
    response = _send(factory, device, "POST", "/events", data=chunks, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert [e["id"] for e in DeviceRecords(factory.home).events(device.uuid)] == ["k1"]
