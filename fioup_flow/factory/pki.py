"""The factory's PKI: one CA that every party on loopback trusts, and what it signs.

The CA (EC P-256) signs the TLS certificates of the gateway, api and registry listeners, the
token-signer certificate (registry bearer tokens carry it in `x5c`, and docker-registry trusts
it because it chains to the CA), and the client certificates of registered devices (the gateway
identifies a device by its certificate's CN). Everything is created once: later `up`s reuse it,
so devices keep trusting the same `root.crt`.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fioup_flow.durable import write_atomic
from fioup_flow.errors import RegistrationError
from fioup_flow.factory.home import FactoryHome

SERVERS = ("gateway", "api", "registry")
CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=825)
# Certificates start a little in the past so a clock a few minutes behind still accepts them.
BACKDATE = datetime.timedelta(minutes=5)


def ensure_pki(home: FactoryHome) -> None:
    """Create the CA, the three server certificates and the token signer, each only if missing."""
    home.pki.mkdir(parents=True, exist_ok=True)
    if not home.ca_cert.exists():
        _make_ca(home)
    for server in SERVERS:
        if not home.server_cert(server).exists():
            _make_leaf(home, home.server_key(server), home.server_cert(server), f"fioup-flow {server}",
                       ExtendedKeyUsageOID.SERVER_AUTH, with_sans=True)
    if not home.token_signer_cert.exists():
        _make_leaf(home, home.token_signer_key, home.token_signer_cert, "fioup-flow token signer",
                   None, with_sans=False)


def issue_client_cert(home: FactoryHome, csr_pem: bytes, factory: str | None = None) -> bytes:
    """Sign a device's CSR: subject CN kept from the CSR (the device uuid), OU = factory name,
    and the CSR's businessCategory if it has one (`production` marks a production device).

    Raises RegistrationError when the CSR is unreadable, badly signed or has no CN.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise RegistrationError(f"unreadable CSR: {exc}") from exc
    if not csr.is_signature_valid:
        raise RegistrationError("the CSR's signature does not match its key")
    common_names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not common_names:
        raise RegistrationError("the CSR has no common name (the device uuid)")
    factory = factory or home.load_state()["factory"]
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, str(common_names[0].value)),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, factory),
        *csr.subject.get_attributes_for_oid(NameOID.BUSINESS_CATEGORY),
    ])
    cert = _sign(home, subject, csr.public_key(), ExtendedKeyUsageOID.CLIENT_AUTH, with_sans=False)
    return cert.public_bytes(serialization.Encoding.PEM)


def common_name(cert: x509.Certificate) -> str:
    """The CN of a certificate's subject (a device's uuid)."""
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_atomic(path, pem, mode=0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _make_ca(home: FactoryHome) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fioup-flow factory CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first: a cert without its key would make the next `ensure_pki` skip the CA for good.
    _write_key(home.ca_key, key)
    _write_cert(home.ca_cert, cert)


def _make_leaf(home: FactoryHome, key_path: Path, cert_path: Path, cn: str,
               usage: x509.ObjectIdentifier | None, with_sans: bool) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = _sign(home, subject, key.public_key(), usage, with_sans)
    _write_key(key_path, key)
    _write_cert(cert_path, cert)


def _sign(home: FactoryHome, subject: x509.Name, public_key, usage: x509.ObjectIdentifier | None,
          with_sans: bool) -> x509.Certificate:
    ca_key = serialization.load_pem_private_key(home.ca_key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(home.ca_cert.read_bytes())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca_cert.subject).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + LEAF_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if with_sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    return builder.sign(ca_key, hashes.SHA256())
