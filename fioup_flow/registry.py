"""The device's registry client: the Docker token flow, manifests, and blobs by byte range.

Authentication follows the registry's own instructions: an unauthenticated request gets a 401
whose `WWW-Authenticate: Bearer realm=..,service=..,scope=..` says where to get a token, and the
token is cached per scope until it nears expiry. As containerd's docker authorizer does (which
composeapp fetches through), the credentials are chosen by the host of the registry that sent
the challenge: the device's own (`/hub-creds/`) go, as HTTP Basic, only to the realm named by
the registry its `ServerURL` names; any other registry (a third party's, Docker Hub) gets an
anonymous token request. Stricter than containerd: a realm must be https, since it receives the
credentials.

Redirects are followed here, not by requests: the real hub and Docker Hub answer blob GETs with
a 307 to cloud storage on another host, and neither the bearer token nor anything else of the
registry's may go there; a redirect to another origin drops the Authorization header, and one
to plain http is refused. Blobs are streamed and can start at an offset (`Range`, which follows
a redirect), which is how a partial download resumes.

Every answer is streamed, and what is buffered (a manifest, a token) is read under a cap: a
hostile or broken registry cannot make the device hold more than the cap plus one chunk, and an
error answer's body is never read at all.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, TypeVar
from urllib.parse import urljoin, urlsplit

import requests

from fioup_flow.errors import FetchError
from fioup_flow.keylock import KeyLocks
from fioup_flow.reference import PinnedRef, registry_host
from fioup_flow.retry import ServerError, describe, retrying
from fioup_flow.store import DigestMismatchError
from fioup_flow.tls import SystemTrustSession

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
MAX_MANIFEST_SIZE = 100 * 1024
TOKEN_MAX = 64 * 1024  # a token answer: a JWT with its certificate chain is a few KiB
READ_CHUNK = 16 * 1024
MAX_REDIRECTS = 10  # as Go's http client, which containerd uses
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
T = TypeVar("T")


@dataclass(frozen=True)
class HubCredentials:
    """The device's registry credentials (`/hub-creds/`) and the one registry they belong to."""

    registry: str  # host[:port] of the registry named by ServerURL, as `origin` gives it
    username: str
    secret: str

    @classmethod
    def from_answer(cls, answer: dict) -> "HubCredentials":
        """From the gateway's answer, a Docker credential helper's `{ServerURL, Username, Secret}`."""
        try:
            return cls(origin(str(answer["ServerURL"])), str(answer["Username"]), str(answer["Secret"]))
        except (KeyError, TypeError) as exc:
            raise RegistryError(f"the gateway's registry credentials lack {exc}") from exc


Credentials = Callable[[], HubCredentials]


class BlobSource(Protocol):
    """Where the fetch task and the walk of an app tree read blobs from: the registries
    (`RegistryClient`), or an offline bundle's folder (`offline.BundleBlobs`). The store verifies
    every blob on its way in, whichever it came from."""

    def manifest(self, ref: PinnedRef, limit: int) -> tuple[bytes, str]:
        """The manifest `ref` pins, at most `limit` bytes, verified against its digest; (bytes, media type)."""

    def open_blob(self, ref: PinnedRef, offset: int = 0) -> Iterable[bytes]:
        """The blob's bytes from `offset` on."""

    def damaged(self, ref: PinnedRef, reason: str) -> FetchError:
        """The error for bytes of `ref` that do not match its digest (`reason`), naming where they
        were read: the Target's own fault from a registry, a damaged medium from a bundle."""


class RegistryError(FetchError):
    """The registry refused or failed a request in a way that retrying will not fix."""


def origin(server: str) -> str:
    """The registry host a URL or a bare `host[:port]` names, compared exactly: lower case, no
    default https port, Docker Hub's `docker.io` as `registry-1.docker.io`."""
    netloc = urlsplit(server if "://" in server else f"https://{server}").netloc.lower()
    return registry_host(netloc.removesuffix(":443"))


def parse_challenge(header: str) -> dict[str, str]:
    """`Bearer realm="..",service="..",scope=".."` -> {"realm": .., "service": .., "scope": ..}."""
    scheme, _, params = header.partition(" ")
    if scheme.lower() != "bearer":
        raise RegistryError(f"the registry asks for {scheme} auth; only Bearer tokens are supported")
    return dict(_CHALLENGE_PARAM.findall(params))


class RegistryClient:
    """Reads manifests and blobs from registries over TLS, with token auth.

    TLS trusts the system's CA store plus the factory's CA (`factory_ca`, the device's root.crt).
    """

    def __init__(self, factory_ca: Path, credentials: Credentials, retry_seconds: float | None = None):
        self.session = SystemTrustSession([factory_ca])
        self.credentials = credentials
        self.retry_seconds = retry_seconds
        self._tokens: dict[str, tuple[str, float]] = {}
        self._challenges: dict[str, dict[str, str]] = {}  # repository -> its last Bearer challenge
        # a lock per token, held while it is fetched (so that it is fetched once), none across
        # tokens: the apps' trees are walked at once, each repository asking its own
        self._token_locks = KeyLocks()

    # --- auth --------------------------------------------------------------------------
    def _token(self, registry: str, challenge: dict[str, str], force: bool) -> str:
        realm = challenge.get("realm", "")
        if urlsplit(realm).scheme != "https":
            raise RegistryError(f"the registry {registry} names a token realm that is not https ({realm!r}); "
                                "fioup-flow asks no token there")
        key = f"{registry}|{realm}|{challenge.get('service')}|{challenge.get('scope')}"
        with self._token_locks.held(key):
            cached = self._tokens.get(key)
            if cached and not force and cached[1] > time.monotonic():
                return cached[0]
            params = {k: v for k, v in challenge.items() if k in ("service", "scope")}
            # A realm that redirects would take the credentials along: not followed.
            response = self.session.get(realm, params=params, auth=self._basic_auth(registry),
                                        allow_redirects=False, timeout=(10, 30), stream=True)
            if response.status_code >= 500:
                raise ServerError(response)
            if not response.ok:
                response.close()
                raise RegistryError(f"the token service of {registry} refused the device: {response.status_code}")
            try:
                body = json.loads(read_bounded(response, TOKEN_MAX, "the registry's token answer"))
            except ValueError as exc:
                raise RegistryError(f"the registry's token answer is not JSON: {exc}") from exc
            token = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in", 60))
            self._tokens[key] = (token, time.monotonic() + max(lifetime - 30, lifetime / 2))
            return token

    def _basic_auth(self, registry: str) -> tuple[str, str] | None:
        """The device's credentials for this registry's realm: only the registry they belong to gets them.

        Asked for every token, a third party's too: which registry they belong to is in the answer.
        """
        credentials = self.credentials()
        return (credentials.username, credentials.secret) if credentials.registry == registry else None

    def _get(self, repository: str, url: str, headers: dict[str, str]) -> requests.Response:
        """GET with the token dance: send the repository's cached token, get one on 401, try once more.

        Once a repository answered with a challenge, its token goes with the first request, so
        each blob costs one request, not three (401, credentials and token, then the blob); only
        a token the registry refuses is fetched anew. The answer is streamed: its body is the
        caller's to read, within bounds.
        """
        registry = origin(url)
        challenge = self._challenges.get(repository)
        token_refused = False
        for _ in range(2):
            request_headers = dict(headers)
            if challenge:
                request_headers["Authorization"] = f"Bearer {self._token(registry, challenge, force=token_refused)}"
            response = self._follow(url, request_headers)
            if response.status_code != 401:
                break
            response.close()
            if origin(response.url) != registry:
                raise RegistryError(f"GET {url}: {response.url}, where the registry redirected, asks for credentials")
            token_refused = challenge is not None
            challenge = self._challenges[repository] = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if response.status_code >= 500:
            raise ServerError(response)
        if not response.ok:
            response.close()
            where = "the registry" if origin(response.url) == registry else f"{response.url}, where it redirected,"
            raise RegistryError(f"GET {url}: {where} answered {response.status_code} {response.reason}")
        return response

    def _follow(self, url: str, headers: dict[str, str]) -> requests.Response:
        """GET `url` and the redirects it answers; Authorization stays with the origin it was meant for."""
        start = origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            response = self.session.get(url, headers=headers, stream=True, allow_redirects=False, timeout=(10, 60))
            if not response.is_redirect:
                return response
            response.close()
            url = urljoin(url, response.headers["Location"])
            if urlsplit(url).scheme != "https":
                raise RegistryError(f"the registry {start} redirects to {url}, which is not https")
            if origin(url) != start:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        raise RegistryError(f"the registry {start} redirects more than {MAX_REDIRECTS} times")

    def _with_retries(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return retrying(self.retry_seconds)(fn)
        except (requests.RequestException, ServerError) as exc:
            raise FetchError(f"{what}: {describe(exc)}") from exc

    # --- reads -------------------------------------------------------------------------
    @staticmethod
    def _url(ref: PinnedRef, kind: str) -> str:
        return f"https://{ref.registry_host}/v2/{ref.repository}/{kind}/{ref.digest}"

    def manifest(self, ref: PinnedRef, limit: int = MAX_MANIFEST_SIZE) -> tuple[bytes, str]:
        """The manifest `ref` pins (at most `limit` bytes), verified against its digest; returns (bytes, media type)."""
        url = self._url(ref, "manifests")

        def fetch() -> tuple[bytes, str]:
            response = self._get(_repository(ref), url, {"Accept": MANIFEST_TYPES})
            return read_bounded(response, limit, f"manifest {ref}"), response.headers.get("Content-Type", "")

        data, media_type = self._with_retries(f"manifest {ref}", fetch)
        if "sha256:" + hashlib.sha256(data).hexdigest() != ref.digest:
            raise RegistryError(f"manifest {ref} does not match its digest")
        return data, media_type

    def damaged(self, ref: PinnedRef, reason: str) -> FetchError:
        return DigestMismatchError(f"{reason}, read from {self._url(ref, 'blobs')}")

    def open_blob(self, ref: PinnedRef, offset: int = 0) -> Iterator[bytes]:
        """The blob's bytes from `offset` on; a server that ignores `Range` has the head skipped."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        url = self._url(ref, "blobs")
        response = self._with_retries(f"blob {ref}", lambda: self._get(_repository(ref), url, headers))
        return _from_offset(response, offset)


def read_bounded(response: requests.Response, limit: int, what: str) -> bytes:
    """The body of a streamed answer, refused (RegistryError) as soon as it passes `limit` bytes.

    An announced length past the cap is refused before a byte is read; otherwise at most `limit`
    plus one chunk is ever held, whatever the server sends or claims.
    """
    with response:
        announced = response.headers.get("Content-Length", "")
        if announced.isdigit() and int(announced) > limit:
            raise RegistryError(f"{what} is larger than {limit} bytes ({announced} announced)")
        body = bytearray()
        for chunk in response.iter_content(chunk_size=READ_CHUNK):
            body += chunk
            if len(body) > limit:
                raise RegistryError(f"{what} is larger than {limit} bytes")
        return bytes(body)


def _repository(ref: PinnedRef) -> str:
    """What a token's scope covers: one repository on one registry."""
    return f"{ref.registry_host}/{ref.repository}"


def _from_offset(response: requests.Response, offset: int) -> Iterator[bytes]:
    with response:
        skip = 0
        if offset and response.status_code == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise RegistryError(f"the registry answered range {content_range!r} for offset {offset}")
        elif offset:
            skip = offset  # 200: the whole blob came; drop what we have already
        for chunk in response.iter_content(chunk_size=64 * 1024):
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
            if chunk:
                yield chunk
