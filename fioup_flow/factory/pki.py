"""The factory's PKI: its own CA, a CA standing for the Web PKI, and what each signs.

A real FoundriesFactory has two kinds of TLS: the Device Gateway's, whose CA the device pins
(`root.crt`), and the public web's, which the hub (hub.foundries.io), the cloud storage its blobs
redirect to, and third-party registries use, and which a device trusts through its system's CA
store. So the local factory has two CAs (EC P-256):

- the factory CA signs the gateway's and the api's certificates, the token signer's (registry
  bearer tokens carry it in `x5c`, and docker-registry trusts it because it chains to the CA),
  and the client certificates of registered devices;
- the public CA signs the registries' (`registry`, `thirdparty`) and the blob storage's
  certificates. `public_ca_bundle` is the system's CA bundle plus this CA: a device of this
  factory is given it as `SSL_CERT_FILE`, as if the CA were one of the Web PKI's roots.

Everything is created once: later `up`s reuse it, so devices keep trusting the same `root.crt`.
A server certificate that its CA did not sign (made by an older factory) is made again.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fioup_flow.durable import write_atomic
from fioup_flow.errors import RegistrationError
from fioup_flow.factory.home import FactoryHome

CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=825)
# factory-registration-ref signs device certificates for 7300 days.
DEVICE_VALIDITY = datetime.timedelta(days=7300)
# Certificates start a little in the past so a clock a few minutes behind still accepts them.
BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Authority:
    """A CA's key and certificate files."""

    key: Path
    cert: Path
    name: str


def factory_ca(home: FactoryHome) -> Authority:
    return Authority(home.ca_key, home.ca_cert, "fioup-flow factory CA")


def public_ca(home: FactoryHome) -> Authority:
    return Authority(home.public_ca_key, home.public_ca_cert, "fioup-flow public CA (stands for the Web PKI)")


# server -> the CA that signs its certificate
SERVERS = {"gateway": factory_ca, "api": factory_ca, "registry": public_ca, "thirdparty": public_ca,
           "storage": public_ca}


def ensure_pki(home: FactoryHome) -> None:
    """Create both CAs, the server certificates and the token signer, each only if missing."""
    home.pki.mkdir(parents=True, exist_ok=True)
    for authority in (factory_ca(home), public_ca(home)):
        if not authority.cert.exists():
            _make_ca(authority)
    for server, signer in SERVERS.items():
        if not _issued_by(home.server_cert(server), signer(home)):
            _make_leaf(signer(home), home.server_key(server), home.server_cert(server), f"fioup-flow {server}",
                       ExtendedKeyUsageOID.SERVER_AUTH, with_sans=True)
    if not home.token_signer_cert.exists():
        _make_leaf(factory_ca(home), home.token_signer_key, home.token_signer_cert, "fioup-flow token signer",
                   None, with_sans=False)
    write_public_ca_bundle(home)


def write_public_ca_bundle(home: FactoryHome) -> None:
    """The system's CA bundle (what OpenSSL's default verify paths name) plus the public CA."""
    paths = ssl.get_default_verify_paths()
    system = next((Path(p) for p in (paths.cafile, paths.openssl_cafile) if p and Path(p).is_file()), None)
    bundle = (system.read_bytes().rstrip(b"\n") + b"\n" if system else b"") + home.public_ca_cert.read_bytes()
    write_atomic(home.public_ca_bundle, bundle, mode=0o644)


def issue_client_cert(home: FactoryHome, csr_pem: bytes, factory: str | None = None) -> bytes:
    """Sign a device's CSR as factory-registration-ref does: the subject kept as the CSR has it
    (CN = the device uuid, OU = the factory, businessCategory = `production` for a production
    device), the serial number the uuid's, for client authentication only.

    Raises RegistrationError when the CSR is unreadable, badly signed, has no uuid as CN, or
    names another factory (default: this home's) in its OU.
    """
    factory = factory or home.load_state()["factory"]
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise RegistrationError(f"unreadable CSR: {exc}") from exc
    if not csr.is_signature_valid:
        raise RegistrationError("the CSR's signature does not match its key")
    device_uuid = _subject_value(csr.subject, NameOID.COMMON_NAME, "common name (the device uuid)")
    try:
        serial = uuidlib.UUID(device_uuid).int
    except ValueError as exc:
        raise RegistrationError(f"the CSR's common name {device_uuid!r} is not a uuid") from exc
    named = _subject_value(csr.subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "organizational unit (the factory)")
    if named != factory:
        raise RegistrationError(f"Invalid factory({named}) must be {factory}")
    builder = (
        _leaf_builder(factory_ca(home), csr.subject, csr.public_key(), DEVICE_VALIDITY, serial)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=True)
    )
    return _finish(factory_ca(home), builder).public_bytes(serialization.Encoding.PEM)


def common_name(cert: x509.Certificate) -> str:
    """The CN of a certificate's subject (a device's uuid)."""
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _subject_value(subject: x509.Name, oid: x509.ObjectIdentifier, what: str) -> str:
    values = subject.get_attributes_for_oid(oid)
    if not values:
        raise RegistrationError(f"the CSR has no {what}")
    return str(values[0].value)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_atomic(path, pem, mode=0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _issued_by(cert_path: Path, authority: Authority) -> bool:
    """Whether the certificate at `cert_path` exists and was signed by `authority`."""
    if not cert_path.exists():
        return False
    try:
        _load(cert_path).verify_directly_issued_by(_load(authority.cert))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _make_ca(authority: Authority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, authority.name)])
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
    _write_key(authority.key, key)
    _write_cert(authority.cert, cert)


def _make_leaf(authority: Authority, key_path: Path, cert_path: Path, cn: str,
               usage: x509.ObjectIdentifier | None, with_sans: bool) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = _leaf_builder(authority, subject, key.public_key(), LEAF_VALIDITY, x509.random_serial_number())
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if with_sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    _write_key(key_path, key)
    _write_cert(cert_path, _finish(authority, builder))


def _leaf_builder(authority: Authority, subject: x509.Name, public_key, validity: datetime.timedelta,
                  serial: int) -> x509.CertificateBuilder:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(_load(authority.cert).subject).public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now - BACKDATE).not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )


def _finish(authority: Authority, builder: x509.CertificateBuilder) -> x509.Certificate:
    """Add the authority key id and sign with the authority's key."""
    ca_key = serialization.load_pem_private_key(authority.key.read_bytes(), password=None)
    return (builder
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
