"""The api listener's routes: device registration and the registry's token endpoint.

Registration answers like FoundriesFactory's `POST /ota/devices/`: a map of file names (relative
to the device's sota dir) to contents, which fioup writes as they are. The token endpoint
implements the Docker registry token spec for docker-registry's `auth.token`: devices pull
from their factory's repositories, the publisher also pushes.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import tomllib
from datetime import UTC, datetime

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fioup_flow.errors import RegistrationError
from fioup_flow.factory.devices import DeviceExistsError, DeviceRecords
from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.http import Call, HttpError, Reply
from fioup_flow.factory.pki import common_name, issue_client_cert
from fioup_flow.factory.token import SERVICE, TOKEN_TTL_SECONDS, issue_token

REQUIRED_FIELDS = ("name", "uuid", "csr", "hardware-id", "sota-config-dir")
DEFAULT_TAGS = "main"


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
        pacman = (body.get("overrides") or {}).get("pacman") or {}
        tags = [t.strip() for t in _toml_value(pacman.get("tags", DEFAULT_TAGS)).split(",") if t.strip()]
        apps = _toml_value(pacman["compose_apps"]) if "compose_apps" in pacman else None
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
            self.devices.register(body["name"], body["uuid"], body["hardware-id"], tags, pubkey)
        except DeviceExistsError as exc:
            raise HttpError(409, str(exc)) from exc
        # No TUF root: devices start from the roots their OS image ships (factory-registration-ref
        # answers with these files only).
        files = {
            "sota.toml": sota_toml(state, body["hardware-id"], body["sota-config-dir"], tags, apps),
            "client.pem": cert_pem.decode(),
            "root.crt": self.home.ca_cert.read_text(),
        }
        return Reply.json(files, status=201)

    # --- registry tokens -------------------------------------------------------------------
    def _token(self, call: Call) -> Reply:
        service = call.query.get("service", [SERVICE])[0]
        if service != SERVICE:
            raise HttpError(400, f"unknown service {service!r}")
        subject, allowed = self._authenticate(call)
        access = [grant for scope in call.query.get("scope", [])
                  if (grant := self._grant(scope, allowed)) is not None]
        token = issue_token(self.home, subject, access)
        issued = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        return Reply.json({"token": token, "access_token": token, "expires_in": TOKEN_TTL_SECONDS,
                           "issued_at": issued})

    def _authenticate(self, call: Call) -> tuple[str, set[str]]:
        """(subject, actions it may have) from HTTP Basic auth; 401 if the credentials are wrong."""
        username, password = _basic_auth(call)
        publisher = self.home.load_state()["publisher"]
        if username == publisher["username"] and secrets.compare_digest(password, publisher["secret"]):
            return username, {"pull", "push"}
        if self.devices.registry_secret_matches(username, password):
            return username, {"pull"}
        raise _unauthorized()

    def _grant(self, scope: str, allowed: set[str]) -> dict | None:
        """The access entry for one `repository:<name>:<actions>` scope, within what is allowed."""
        parts = scope.split(":")
        if len(parts) < 3 or parts[0] != "repository":
            return None
        name, actions = ":".join(parts[1:-1]), parts[-1].split(",")
        if not name.startswith(self.home.load_state()["factory"] + "/"):
            return {"type": "repository", "name": name, "actions": []}
        return {"type": "repository", "name": name, "actions": [a for a in actions if a in allowed]}


def sota_toml(state: dict, hardware_id: str, sota_dir: str, tags: list[str], apps: str | None) -> str:
    """The device's sota.toml: where its gateway, files and apps are (the factory contract)."""
    server = f"https://127.0.0.1:{state['ports']['gateway']}"
    pacman = {"type": "ostree+compose_apps", "tags": ",".join(tags)}
    if apps is not None:
        pacman["compose_apps"] = apps
    pacman |= {"reset_apps_root": f"{sota_dir}/reset-apps", "compose_apps_root": f"{sota_dir}/compose-apps"}
    config = {
        "tls": {"server": server, "ca_source": "file", "pkey_source": "file", "cert_source": "file"},
        "provision": {"primary_ecu_hardware_id": hardware_id},
        "uptane": {"repo_server": f"{server}/repo", "polling_seconds": "300"},
        "pacman": pacman,
        "storage": {"path": sota_dir},
        "import": {"tls_cacert_path": f"{sota_dir}/root.crt", "tls_pkey_path": f"{sota_dir}/pkey.pem",
                   "tls_clientcert_path": f"{sota_dir}/client.pem"},
    }
    return tomli_w.dumps(config)


def _toml_value(value: str) -> str:
    """fioup pre-quotes override values for TOML (`"\\"main\\""`); accept bare ones too."""
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value
    return parsed if isinstance(parsed, str) else value


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
