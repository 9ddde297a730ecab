"""The device's registry client: the Docker token flow, manifests, and blobs by byte range.

Authentication follows the registry's own instructions: an unauthenticated request gets a 401
whose `WWW-Authenticate: Bearer realm=..,service=..,scope=..` says where to get a token; the
token is fetched from the realm with the device's registry credentials (HTTP Basic, from the
gateway's `/hub-creds/`) and cached per scope until it nears expiry. Blobs are streamed and can
start at an offset (`Range`), which is how a partial download resumes.

Every answer is streamed, and what is buffered (a manifest, a token) is read under a cap: a
hostile or broken registry cannot make the device hold more than the cap plus one chunk, and an
error answer's body is never read at all.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import requests

from fioup_flow.errors import FetchError
from fioup_flow.reference import PinnedRef
from fioup_flow.retry import ServerError, describe, retrying
from fioup_flow.tls import PinnedCASession

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
MAX_MANIFEST_SIZE = 100 * 1024
TOKEN_MAX = 64 * 1024  # a token answer: a JWT with its certificate chain is a few KiB
READ_CHUNK = 16 * 1024
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')

Credentials = Callable[[], tuple[str, str]]
T = TypeVar("T")


class RegistryError(FetchError):
    """The registry refused or failed a request in a way that retrying will not fix."""


def parse_challenge(header: str) -> dict[str, str]:
    """`Bearer realm="..",service="..",scope=".."` -> {"realm": .., "service": .., "scope": ..}."""
    scheme, _, params = header.partition(" ")
    if scheme.lower() != "bearer":
        raise RegistryError(f"the registry asks for {scheme} auth; only Bearer tokens are supported")
    return dict(_CHALLENGE_PARAM.findall(params))


class RegistryClient:
    """Reads manifests and blobs from the factory's registry over TLS, with token auth."""

    def __init__(self, ca_cert: Path, credentials: Credentials, retry_seconds: float | None = None):
        self.session = PinnedCASession(ca_cert)
        self.credentials = credentials
        self.retry_seconds = retry_seconds
        self._tokens: dict[str, tuple[str, float]] = {}
        self._challenges: dict[str, dict[str, str]] = {}  # repository -> its last Bearer challenge
        self._lock = threading.Lock()

    # --- auth --------------------------------------------------------------------------
    def _token(self, challenge: dict[str, str], force: bool) -> str:
        key = f"{challenge.get('realm')}|{challenge.get('service')}|{challenge.get('scope')}"
        with self._lock:
            cached = self._tokens.get(key)
            if cached and not force and cached[1] > time.monotonic():
                return cached[0]
            user, secret = self.credentials()
            params = {k: v for k, v in challenge.items() if k in ("service", "scope")}
            response = self.session.get(challenge["realm"], params=params, auth=(user, secret), timeout=(10, 30),
                                        stream=True)
            if response.status_code >= 500:
                raise ServerError(response)
            if not response.ok:
                raise RegistryError(f"the registry's token service refused the device: {response.status_code}")
            try:
                body = json.loads(read_bounded(response, TOKEN_MAX, "the registry's token answer"))
            except ValueError as exc:
                raise RegistryError(f"the registry's token answer is not JSON: {exc}") from exc
            token = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in", 60))
            self._tokens[key] = (token, time.monotonic() + max(lifetime - 30, lifetime / 2))
            return token

    def _get(self, repository: str, url: str, headers: dict[str, str]) -> requests.Response:
        """GET with the token dance: send the repository's cached token, get one on 401, try once more.

        Once a repository answered with a challenge, its token goes with the first request, so
        each blob costs one request, not three (401, credentials and token, then the blob); only
        a token the registry refuses is fetched anew. The answer is streamed: its body is the
        caller's to read, within bounds.
        """
        challenge = self._challenges.get(repository)
        token_refused = False
        for _ in range(2):
            request_headers = dict(headers)
            if challenge:
                request_headers["Authorization"] = f"Bearer {self._token(challenge, force=token_refused)}"
            response = self.session.get(url, headers=request_headers, stream=True, timeout=(10, 60))
            if response.status_code != 401:
                break
            response.close()
            token_refused = challenge is not None
            challenge = self._challenges[repository] = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if response.status_code >= 500:
            raise ServerError(response)
        if not response.ok:
            response.close()
            raise RegistryError(f"GET {url}: the registry answered {response.status_code} {response.reason}")
        return response

    def _with_retries(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return retrying(self.retry_seconds)(fn)
        except (requests.RequestException, ServerError) as exc:
            raise FetchError(f"{what}: {describe(exc)}") from exc

    # --- reads -------------------------------------------------------------------------
    @staticmethod
    def _url(ref: PinnedRef, kind: str) -> str:
        return f"https://{ref.host}/v2/{ref.repository}/{kind}/{ref.digest}"

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
    return f"{ref.host}/{ref.repository}"


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
