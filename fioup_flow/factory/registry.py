"""The factory's container registries: Debian's docker-registry, and the client publish pushes with.

Two registries run, each a docker-registry (Distribution 2.8) with TLS from the public CA (see
pki.py) and auth delegated to the factory's token endpoint (`auth.token`), each its own token
`service`; both trust bearer tokens whose `x5c` chain ends at the factory CA (token.py mints
them):
- the hub, the factory's own registry (hub.foundries.io's stand-in): devices pull their
  factory's repositories with their `/hub-creds/`;
- the third party (Docker Hub's stand-in, say): anyone pulls anonymously, only the publisher
  pushes; it answers blob GETs with a 307 to the blob storage (as Docker Hub redirects to its
  CDN), through Distribution's `redirect` storage middleware, whose URL is the blob's path in
  the registry's storage: `https://<storage>/docker/registry/v2/blobs/sha256/<ab>/<hex>/data`
  (storage.py serves it).
The real hub redirects blob GETs to cloud storage too; the local hub does so only when the
factory was first brought up with `--hub-blob-redirect`, so that by default the registry's own
log counts every byte a device fetched (the power-cut harness reads it).

The publisher does not need the token endpoint: it runs inside the factory and mints its own
push tokens with `issue_token`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests
import yaml

from fioup_flow.durable import write_atomic
from fioup_flow.errors import FioupFlowError
from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.token import ISSUER, SERVICE, THIRDPARTY_SERVICE, issue_token, repository_access

HUB = "registry"
THIRDPARTY = "thirdparty"


@dataclass(frozen=True)
class Site:
    """One of the factory's registries: its service (process, port and certificate) name, token
    service, config and storage folder, and whether its blob GETs redirect to the blob storage."""

    name: str
    service: str
    config: Path
    data: Path
    redirects_blobs: bool

    def host(self, home: FactoryHome) -> str:
        """`127.0.0.1:<port>`: the host of the references to this registry."""
        return f"127.0.0.1:{home.load_state()['ports'][self.name]}"


def hub(home: FactoryHome) -> Site:
    return Site(HUB, SERVICE, home.registry_config, home.registry_data,
                bool(home.load_state().get("hub_blob_redirect")))


def third_party(home: FactoryHome) -> Site:
    return Site(THIRDPARTY, THIRDPARTY_SERVICE, home.thirdparty_config, home.thirdparty_data, True)


SITES: tuple[Callable[[FactoryHome], Site], ...] = (hub, third_party)


def write_registry_config(home: FactoryHome, site: Site) -> None:
    """Write the site's docker-registry config from factory.json's ports (TLS + token auth, loopback only)."""
    ports = home.load_state()["ports"]
    config = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(site.data)},
            "delete": {"enabled": True},
        },
        "http": {
            "addr": site.host(home),
            "tls": {"certificate": str(home.server_cert(site.name)), "key": str(home.server_key(site.name))},
        },
        "auth": {
            "token": {
                "realm": f"https://127.0.0.1:{ports['api']}/token",
                "service": site.service,
                "issuer": ISSUER,
                "rootcertbundle": str(home.ca_cert),
            }
        },
    }
    if site.redirects_blobs:
        config["middleware"] = {"storage": [{"name": "redirect",
                                             "options": {"baseurl": f"https://127.0.0.1:{ports['storage']}"}}]}
    site.data.mkdir(parents=True, exist_ok=True)
    write_atomic(site.config, yaml.safe_dump(config, sort_keys=False).encode(), mode=0o600)


def registry_argv(site: Site) -> list[str]:
    """The command line that runs the registry (its config must have been written)."""
    return ["docker-registry", "serve", str(site.config)]


def registry_host(home: FactoryHome) -> str:
    """`127.0.0.1:<port>`: the host part of every image and app reference of this factory's hub."""
    return hub(home).host(home)


class RegistryPushError(FioupFlowError):
    """The registry refused an upload (publish cannot go on)."""


class RegistryPusher:
    """Pushes blobs and manifests to one of the factory's registries with self-minted tokens.

    Blobs are uploaded monolithically (`POST` then one streamed `PUT ?digest=`), skipping those
    the repository already has, so republishing an unchanged image only re-puts its manifest.
    """

    def __init__(self, home: FactoryHome, subject: str = "publisher", site: Site | None = None):
        self.home = home
        self.subject = subject
        self.site = site or hub(home)
        self.host = self.site.host(home)
        self.base = f"https://{self.host}"
        self.session = requests.Session()
        self._tokens: dict[str, str] = {}

    def _headers(self, repository: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        if repository not in self._tokens:
            access = repository_access(repository, ["pull", "push"])
            self._tokens[repository] = issue_token(self.home, self.subject, access, self.site.service)
        return {"Authorization": f"Bearer {self._tokens[repository]}", **(extra or {})}

    def _send(self, method: str, url: str, repository: str, headers: dict[str, str] | None = None,
              **kwargs) -> requests.Response:
        # `verify` per request: a Session's own `verify` loses to REQUESTS_CA_BUNDLE. A blob HEAD
        # the registry redirects to the storage is followed there (requests drops the token).
        try:
            return self.session.request(method, url, headers=self._headers(repository, headers),
                                        verify=str(self.home.public_ca_cert), timeout=kwargs.pop("timeout", 60),
                                        **kwargs)
        except requests.ConnectionError as error:
            raise RegistryPushError(f"cannot reach the registry at {self.base} (is the factory up?): {error}") \
                from error

    def _check(self, response: requests.Response, what: str) -> requests.Response:
        if not response.ok:
            raise RegistryPushError(f"registry refused {what}: HTTP {response.status_code} {response.text[:300]}")
        return response

    def has_blob(self, repository: str, digest: str) -> bool:
        url = f"{self.base}/v2/{repository}/blobs/{digest}"
        response = self._send("HEAD", url, repository)
        return response.status_code == 200

    def push_blob(self, repository: str, path: Path, digest: str) -> None:
        """Upload the file at `path` as blob `digest` unless the repository has it already."""
        if self.has_blob(repository, digest):
            return
        start = self._send("POST", f"{self.base}/v2/{repository}/blobs/uploads/", repository)
        location = urljoin(self.base, self._check(start, f"an upload to {repository}").headers["Location"])
        size = path.stat().st_size
        with path.open("rb") as body:
            done = self._send("PUT", _with_query(location, digest=digest), repository,
                              {"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                              data=body, timeout=600)
        self._check(done, f"blob {digest} in {repository}")

    def push_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """PUT a manifest under `reference` (tag or digest); returns its digest."""
        response = self._send("PUT", f"{self.base}/v2/{repository}/manifests/{reference}", repository,
                              {"Content-Type": media_type}, data=body)
        self._check(response, f"manifest {reference} in {repository}")
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def get(self, repository: str, kind: str, reference: str, accept: str = "*/*",
            stream: bool = False) -> requests.Response:
        """GET `/v2/<repository>/<kind>/<reference>` (kind: blobs or manifests), for checks and for
        offline bundles (`stream` to read a blob as it comes)."""
        response = self._send("GET", f"{self.base}/v2/{repository}/{kind}/{reference}", repository,
                              {"Accept": accept}, stream=stream)
        return self._check(response, f"{kind}/{reference} of {repository}")


def _with_query(url: str, **params: str) -> str:
    """`url` with `params` added to its query (upload locations carry their own `_state`)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))
