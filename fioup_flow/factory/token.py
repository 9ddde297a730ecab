"""Bearer tokens for the factory's registry (the Docker registry token spec).

docker-registry (Distribution 2.8) trusts a token when its `x5c` header carries the signing
certificate and that certificate chains to `auth.token.rootcertbundle` (the factory CA). `iss`
and `aud` must equal the registry config's `issuer` and `service`, and `access` must grant the
actions on the repository. The constants below are the one source of those names: the registry
configs (registry.py) are written from them too. Each of the factory's two registries (its hub
and the one standing for a third party) is its own `service`, so a token for one is refused by
the other.
"""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

from fioup_flow.factory.home import FactoryHome

ISSUER = "fioup-flow-factory"
SERVICE = "fioup-flow-registry"
THIRDPARTY_SERVICE = "fioup-flow-thirdparty"
TOKEN_TTL_SECONDS = 300
# Tolerates small clock differences between the minting and the checking process.
NOT_BEFORE_SLACK_SECONDS = 10


def _der_b64(pem_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(pem_path.read_bytes())
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode()


def issue_token(home: FactoryHome, subject: str, access: list[dict], service: str = SERVICE) -> str:
    """An ES256 JWT for `subject` granting `access` (items `{"type","name","actions"}`) on `service`."""
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": subject,
        "aud": service,
        "exp": now + TOKEN_TTL_SECONDS,
        "nbf": now - NOT_BEFORE_SLACK_SECONDS,
        "iat": now,
        "jti": secrets.token_hex(16),
        "access": access,
    }
    key = load_pem_private_key(home.token_signer_key.read_bytes(), password=None)
    headers = {"x5c": [_der_b64(home.token_signer_cert), _der_b64(home.ca_cert)]}
    return jwt.encode(claims, key, algorithm="ES256", headers=headers)


def repository_access(repository: str, actions: list[str]) -> list[dict]:
    """The `access` claim for one repository (what the token endpoint and the publisher ask)."""
    return [{"type": "repository", "name": repository, "actions": list(actions)}]
