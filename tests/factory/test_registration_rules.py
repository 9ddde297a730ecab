"""The factory registers devices by the rules of the real service's reference implementation
(foundriesio/factory-registration-ref): the CSR's subject is kept and must name this factory,
the device's overrides are written into its sota.toml, and the answer carries the chained
client certificate too.
"""

from __future__ import annotations

import tomllib
import uuid as uuidlib
from pathlib import Path

import pytest
import requests
from core_factory import Factory, registration_body
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fioup_flow.register import make_key_and_csr

pytestmark = pytest.mark.factory


def post(factory: Factory, body: dict) -> requests.Response:
    return requests.post(f"{factory.api}/ota/devices/", json=body, verify=factory.info["ca"], timeout=30,
                         headers={"OSF-TOKEN": factory.info["registration_token"]})


def body_for(factory: Factory, tmp_path: Path, csr_factory: str | None = None, production: bool = False,
             **kwargs) -> dict:
    device_uuid = str(uuidlib.uuid4())
    _, csr = make_key_and_csr(device_uuid, csr_factory or factory.info["factory"], production)
    return registration_body(f"r-{device_uuid[:8]}", device_uuid, csr, tmp_path, **kwargs)


def test_the_certificate_keeps_the_csr_subject_and_the_answer_chains_it_to_the_ca(factory, tmp_path) -> None:
    body = body_for(factory, tmp_path, production=True)
    response = post(factory, body)
    assert response.status_code == 201, response.text
    files = response.json()
    cert = x509.load_pem_x509_certificate(files["client.pem"].encode())
    assert cert.subject == x509.load_pem_x509_csr(body["csr"].encode()).subject
    assert cert.subject.get_attributes_for_oid(NameOID.BUSINESS_CATEGORY)[0].value == "production"
    assert cert.serial_number == uuidlib.UUID(body["uuid"]).int
    assert files["client.chained"] == files["client.pem"] + "\n" + factory.home.ca_cert.read_text()


def test_a_csr_that_names_another_factory_or_none_is_refused(factory, tmp_path) -> None:
    other = post(factory, body_for(factory, tmp_path, csr_factory="someone-else"))
    assert other.status_code == 400 and f"must be {factory.info['factory']}" in other.text
    device_uuid = str(uuidlib.uuid4())
    key = ec.generate_private_key(ec.SECP256R1())
    bare = (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_uuid)])).sign(key, hashes.SHA256()))
    body = registration_body("bare", device_uuid, bare.public_bytes(serialization.Encoding.PEM), tmp_path)
    response = post(factory, body)
    assert response.status_code == 400 and "organizational unit" in response.text


def test_the_overrides_are_written_into_sota_toml_section_by_section(factory, tmp_path) -> None:
    body = body_for(factory, tmp_path)
    body["overrides"]["uptane"] = {"polling_seconds": '"60"'}
    body["overrides"]["pacman"]["storage_watermark"] = "80"
    sota = tomllib.loads(post(factory, body).json()["sota.toml"])
    assert sota["uptane"]["polling_seconds"] == "60" and sota["uptane"]["repo_server"].endswith("/repo")
    assert sota["pacman"]["storage_watermark"] == 80
    assert sota["pacman"]["reset_apps_root"] == f"{tmp_path}/reset-apps"


def test_without_overrides_sota_toml_has_the_factory_s_defaults_only(factory, tmp_path) -> None:
    body = body_for(factory, tmp_path)
    del body["overrides"]
    sota = tomllib.loads(post(factory, body).json()["sota.toml"])
    assert sota["pacman"] == {"type": "ostree+compose_apps"}


@pytest.mark.parametrize("overrides", [{"pacman": {"tags": "main"}}, {"pacman": "x"}, ["pacman"],
                                       {"pacman": {"tags": "[unclosed"}}])
def test_overrides_that_are_not_toml_values_are_refused(factory, tmp_path, overrides) -> None:
    """The reference pastes them into sota.toml as they are: a bare `main` would break the device's config."""
    response = post(factory, body_for(factory, tmp_path) | {"overrides": overrides})
    assert response.status_code == 400
