"""The api listener's routes: device registration and the registries' token endpoint.

Registration answers like FoundriesFactory's `POST /ota/devices/` (and its reference service,
foundriesio/factory-registration-ref): it signs the CSR keeping its subject, refuses a CSR that
names another factory in its OU, writes `sota.toml` from its defaults with the device's
`overrides` (TOML values, pasted in section by section), and answers a map of file names
(relative to the device's sota dir) to contents, which fioup writes as they are: `sota.toml`,
`client.pem`, `client.chained` (the client certificate, then the CA that signed it) and
`root.crt` (the CA the device pins for the gateway).

The token endpoint implements the Docker registry token spec for docker-registry's
`auth.token`, for two registries told apart by `service`: the factory's hub, where devices pull
their factory's repositories with their `/hub-creds/` and the publisher also pushes; and the
second registry standing for a third party (Docker Hub, say), where anyone pulls anonymously and
only the publisher, its one account, pushes: it knows no device, so a device that sent its hub
credentials there would be refused, as Docker Hub refuses credentials it does not know.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import tomllib
from datetime import UTC, datetime
from typing import Any

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fioup_flow.errors import RegistrationError
from fioup_flow.factory.devices import DeviceExistsError, DeviceRecords
from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.http import Call, HttpError, Reply
from fioup_flow.factory.pki import common_name, issue_client_cert
from fioup_flow.factory.token import SERVICE, THIRDPARTY_SERVICE, TOKEN_TTL_SECONDS, issue_token

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("name", "uuid", "csr", "hardware-id", "sota-config-dir")
DEFAULT_TAGS = "main"
ANONYMOUS = "anonymous"


class ApiApp:
    def __init__(self, home: FactoryHome):
        self.home = home
        self.devices = DeviceRecords(home)

    def handle(self, call: Call) -> Reply:
        route = (call.method, call.path.rstrip("/"))
        if route == ("POST", "/ota/devices"):
            return self._register(call)
        if route == ("GET", "/ota/devices"):
            return Reply.json({})  # fioup's reachability ping
        if route == ("GET", "/token"):
            return self._token(call)
        raise HttpError(404, f"no route {call.method} {call.path}")

    # --- registration ----------------------------------------------------------------------
    def _register(self, call: Call) -> Reply:
        state = self.home.load_state()
        if not secrets.compare_digest(call.headers.get("osf-token", ""), state["registration_token"]):
            raise HttpError(401, "wrong or missing OSF-TOKEN")
        body = call.json()
        if not isinstance(body, dict) or any(not isinstance(body.get(k), str) or not body[k] for k in REQUIRED_FIELDS):
            raise HttpError(400, f"the body needs the string fields {', '.join(REQUIRED_FIELDS)}")
        overrides = parse_overrides(body.get("overrides"))
        tags = [t.strip() for t in str(overrides.get("pacman", {}).get("tags", DEFAULT_TAGS)).split(",") if t.strip()]
        try:
            cert_pem = issue_client_cert(self.home, body["csr"].encode(), state["factory"])
        except RegistrationError as exc:
            raise HttpError(400, str(exc)) from exc
        cert = x509.load_pem_x509_certificate(cert_pem)
        if common_name(cert) != body["uuid"]:
            raise HttpError(400, "the CSR's common name must be the device uuid")
        pubkey = cert.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        try:
            self.devices.register(body["name"], body["uuid"], body["hardware-id"], tags, pubkey,
                                  group=body.get("group") or None, request=body)
        except DeviceExistsError as exc:
            raise HttpError(409, str(exc)) from exc
        # No TUF root: devices start from the roots their OS image ships (factory-registration-ref
        # answers with these files only).
        ca = self.home.ca_cert.read_text()
        files = {
            "sota.toml": sota_toml(state, body["hardware-id"], body["sota-config-dir"], overrides),
            "client.pem": cert_pem.decode(),
            "client.chained": cert_pem.decode() + "\n" + ca,
            "root.crt": ca,
        }
        return Reply.json(files, status=201)

    # --- registry tokens -------------------------------------------------------------------
    def _token(self, call: Call) -> Reply:
        service = call.query.get("service", [SERVICE])[0]
        if service not in (SERVICE, THIRDPARTY_SERVICE):
            raise HttpError(400, f"unknown service {service!r}")
        subject, allowed = self._authenticate(call) if service == SERVICE else self._third_party_account(call)
        access = [grant for scope in call.query.get("scope", [])
                  if (grant := self._grant(service, scope, allowed)) is not None]
        log.info("token for %s: service=%s scope=%s", subject, service, " ".join(call.query.get("scope", [])))
        token = issue_token(self.home, subject, access, service)
        issued = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        return Reply.json({"token": token, "access_token": token, "expires_in": TOKEN_TTL_SECONDS,
                           "issued_at": issued})

    def _authenticate(self, call: Call) -> tuple[str, set[str]]:
        """(subject, actions it may have) on the hub, from HTTP Basic auth; 401 if the credentials are wrong."""
        username, password = _basic_auth(call)
        if self._is_publisher(username, password):
            return username, {"pull", "push"}
        if self.devices.registry_secret_matches(username, password):
            return username, {"pull"}
        raise _unauthorized()

    def _third_party_account(self, call: Call) -> tuple[str, set[str]]:
        """On the third party: anyone pulls without credentials; only the publisher's are known."""
        if "authorization" not in call.headers:
            return ANONYMOUS, {"pull"}
        username, password = _basic_auth(call)
        if self._is_publisher(username, password):
            return username, {"pull", "push"}
        raise _unauthorized()

    def _is_publisher(self, username: str, password: str) -> bool:
        publisher = self.home.load_state()["publisher"]
        return username == publisher["username"] and secrets.compare_digest(password, publisher["secret"])

    def _grant(self, service: str, scope: str, allowed: set[str]) -> dict | None:
        """The access entry for one `repository:<name>:<actions>` scope, within what is allowed
        (on the hub, only in this factory's repositories)."""
        parts = scope.split(":")
        if len(parts) < 3 or parts[0] != "repository":
            return None
        name, actions = ":".join(parts[1:-1]), parts[-1].split(",")
        if service == SERVICE and not name.startswith(self.home.load_state()["factory"] + "/"):
            return {"type": "repository", "name": name, "actions": []}
        return {"type": "repository", "name": name, "actions": [a for a in actions if a in allowed]}


def sota_toml(state: dict, hardware_id: str, sota_dir: str, overrides: dict[str, dict[str, Any]]) -> str:
    """The device's sota.toml: the factory's defaults (where its gateway and files are), then
    the device's overrides, key by key, as factory-registration-ref's `sota_toml_fmt` does."""
    server = f"https://127.0.0.1:{state['ports']['gateway']}"
    config: dict[str, dict[str, Any]] = {
        "tls": {"server": server, "ca_source": "file", "pkey_source": "file", "cert_source": "file"},
        "provision": {"primary_ecu_hardware_id": hardware_id},
        "uptane": {"repo_server": f"{server}/repo", "polling_seconds": "300"},
        "pacman": {"type": "ostree+compose_apps"},
        "storage": {"path": sota_dir},
        "import": {"tls_cacert_path": f"{sota_dir}/root.crt", "tls_pkey_path": f"{sota_dir}/pkey.pem",
                   "tls_clientcert_path": f"{sota_dir}/client.pem"},
    }
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values)
    return tomli_w.dumps(config)


def parse_overrides(overrides: Any) -> dict[str, dict[str, Any]]:
    """`{section: {key: "<TOML value>"}}` -> the values. fioup quotes each value for TOML (the
    reference service pastes them into sota.toml as they are); one that is not a TOML value
    would make the device's sota.toml unreadable, so it is refused (400)."""
    if overrides is None:
        return {}
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise HttpError(400, "overrides must map sections to {key: TOML value}")
    parsed: dict[str, dict[str, Any]] = {}
    for section, values in overrides.items():
        for key, text in values.items():
            try:
                value = tomllib.loads(f"v = {text}")["v"] if isinstance(text, str) else None
            except tomllib.TOMLDecodeError:
                value = None
            if value is None or isinstance(value, dict):
                raise HttpError(400, f"override {section}.{key} is not a TOML value: {text!r}")
            parsed.setdefault(section, {})[key] = value
    return parsed


def _basic_auth(call: Call) -> tuple[str, str]:
    scheme, _, encoded = call.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        raise _unauthorized()
    try:
        username, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise _unauthorized() from None
    if not sep:
        raise _unauthorized()
    return username, password


def _unauthorized() -> HttpError:
    return HttpError(401, "wrong or missing credentials", {"WWW-Authenticate": 'Basic realm="fioup-flow-factory"'})
