"""The factory PKI: made once, servers valid for loopback under the right CA, device certs as the CSR says."""

from __future__ import annotations

import ipaddress
import ssl
import stat
import uuid as uuidlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fioup_flow.errors import RegistrationError
from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.pki import SERVERS, ensure_pki, issue_client_cert
from fioup_flow.register import make_key_and_csr

UUID = "1b9e4a1c-0000-4000-8000-000000000001"


@pytest.fixture()
def home(tmp_path) -> FactoryHome:
    home = FactoryHome(tmp_path)
    ensure_pki(home)
    return home


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ensure_pki_creates_everything_once_and_keeps_it(home):
    paths = [home.ca_cert, home.ca_key, home.public_ca_cert, home.public_ca_key, home.token_signer_cert,
             home.token_signer_key]
    paths += [p for s in SERVERS for p in (home.server_cert(s), home.server_key(s))]
    before = {p: p.read_bytes() for p in paths}
    ensure_pki(home)
    assert {p: p.read_bytes() for p in paths} == before


def test_private_keys_are_readable_by_the_owner_only(home):
    for key in [home.ca_key, home.public_ca_key, home.token_signer_key] + [home.server_key(s) for s in SERVERS]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_the_gateway_and_api_are_the_factory_ca_s_the_registries_and_storage_the_public_ca_s(home):
    factory_ca, public_ca = _cert(home.ca_cert), _cert(home.public_ca_cert)
    assert {s: _issuer(home, s) for s in SERVERS} == {"gateway": factory_ca.subject, "api": factory_ca.subject,
                                                      "registry": public_ca.subject, "thirdparty": public_ca.subject,
                                                      "storage": public_ca.subject}
    for server in SERVERS:
        cert = _cert(home.server_cert(server))
        cert.verify_directly_issued_by(factory_ca if server in ("gateway", "api") else public_ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
        assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in usage


def _issuer(home, server):
    return _cert(home.server_cert(server)).issuer


def test_a_registry_cert_made_by_the_factory_ca_is_made_again_by_the_public_ca(home):
    """A factory made before the public CA existed had its registry signed by the factory CA."""
    home.server_cert("registry").write_bytes(home.server_cert("gateway").read_bytes())
    ensure_pki(home)
    _cert(home.server_cert("registry")).verify_directly_issued_by(_cert(home.public_ca_cert))


def test_the_bundle_for_devices_is_the_system_s_plus_the_public_ca(home):
    bundle = home.public_ca_bundle.read_bytes()
    assert bundle.endswith(home.public_ca_cert.read_bytes())
    assert bundle.startswith(Path(ssl.get_default_verify_paths().cafile).read_bytes().rstrip(b"\n"))
    assert home.ca_cert.read_bytes() not in bundle


def test_the_token_signer_chains_to_the_ca(home):
    _cert(home.token_signer_cert).verify_directly_issued_by(_cert(home.ca_cert))


@pytest.mark.parametrize("production", [False, True])
def test_a_device_cert_keeps_the_csr_subject_as_factory_registration_ref_does(home, production):
    _, csr = make_key_and_csr(UUID, "acme", production)
    cert = x509.load_pem_x509_certificate(issue_client_cert(home, csr, "acme"))
    cert.verify_directly_issued_by(_cert(home.ca_cert))
    assert cert.subject == x509.load_pem_x509_csr(csr).subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == UUID
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "acme"
    business = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.BUSINESS_CATEGORY)]
    assert business == (["production"] if production else [])
    assert cert.serial_number == uuidlib.UUID(UUID).int
    assert cert.public_key() == x509.load_pem_x509_csr(csr).public_key()
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert usage.critical and list(usage.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_a_csr_for_another_factory_is_refused(home):
    _, csr = make_key_and_csr(UUID, "other")
    with pytest.raises(RegistrationError, match=r"Invalid factory\(other\) must be acme"):
        issue_client_cert(home, csr, "acme")


def test_a_csr_that_is_not_pem_is_refused(home):
    with pytest.raises(RegistrationError):
        issue_client_cert(home, b"not a csr", "acme")
