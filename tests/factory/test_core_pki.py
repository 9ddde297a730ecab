"""The factory PKI: made once, servers valid for loopback, device certs named by their CSR."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fioup_flow.errors import RegistrationError
from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.pki import SERVERS, ensure_pki, issue_client_cert
from fioup_flow.register import make_key_and_csr


@pytest.fixture()
def home(tmp_path) -> FactoryHome:
    home = FactoryHome(tmp_path)
    ensure_pki(home)
    return home


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ensure_pki_creates_everything_once_and_keeps_it(home):
    paths = [home.ca_cert, home.ca_key, home.token_signer_cert, home.token_signer_key]
    paths += [p for s in SERVERS for p in (home.server_cert(s), home.server_key(s))]
    before = {p: p.read_bytes() for p in paths}
    ensure_pki(home)
    assert {p: p.read_bytes() for p in paths} == before


def test_private_keys_are_readable_by_the_owner_only(home):
    for key in [home.ca_key, home.token_signer_key] + [home.server_key(s) for s in SERVERS]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_server_certs_are_signed_by_the_ca_for_loopback_names(home):
    ca = _cert(home.ca_cert)
    for server in SERVERS:
        cert = _cert(home.server_cert(server))
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
        assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in usage


def test_the_token_signer_chains_to_the_ca(home):
    _cert(home.token_signer_cert).verify_directly_issued_by(_cert(home.ca_cert))


def test_a_device_cert_keeps_the_csr_common_name_and_names_the_factory(home):
    _, csr = make_key_and_csr("1b9e4a1c-0000-4000-8000-000000000001")
    cert = x509.load_pem_x509_certificate(issue_client_cert(home, csr, "acme"))
    cert.verify_directly_issued_by(_cert(home.ca_cert))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "1b9e4a1c-0000-4000-8000-000000000001"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "acme"
    assert cert.public_key() == x509.load_pem_x509_csr(csr).public_key()
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage


def test_a_csr_that_is_not_pem_is_refused(home):
    with pytest.raises(RegistrationError):
        issue_client_cert(home, b"not a csr", "acme")
