"""OCI references pinned by digest: `host[:port]/path/name@sha256:<hex>`.

App URIs in Targets and service images in compose files are both of this form; the app name of
an app URI is the last path element, which fioup requires to match the app's key in the Target.

Names are read the way Docker reads them (distribution's `ParseNormalizedNamed`, which
composectl pins compose images with): the first path element is a registry host only if it has
a `.` or a `:`, is `localhost`, or has upper-case letters; otherwise the name is Docker Hub's,
`docker.io/<name>` (also for the legacy `index.docker.io`), and a one-element Docker Hub name is
in `library/`. Docker Hub's registry answers at `registry-1.docker.io`, not `docker.io`
(containerd's `ConfigureDefaultRegistries`, which composeapp fetches through): `registry_host`
says where to connect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
DOCKER_HUB = "docker.io"
DOCKER_HUB_LEGACY = "index.docker.io"
DOCKER_HUB_REGISTRY = "registry-1.docker.io"


class ReferenceError(ValueError):
    """The string is not a digest-pinned OCI reference."""


@dataclass(frozen=True)
class PinnedRef:
    host: str
    repository: str
    digest: str

    @classmethod
    def parse(cls, ref: str) -> "PinnedRef":
        locator, sep, digest = ref.partition("@")
        if not sep or not _DIGEST.match(digest):
            raise ReferenceError(f"{ref!r} is not pinned by a sha256 digest")
        host, repository = _split_host(locator)
        if not _HOST.match(host):
            raise ReferenceError(f"{ref!r} does not name a valid registry host")
        repository = repository.split(":", 1)[0]  # a tag beside the digest is allowed and ignored
        if not repository or not all(_PATH_COMPONENT.match(c) for c in repository.split("/")):
            raise ReferenceError(f"{ref!r} has an invalid repository path")
        return cls(host=host, repository=repository, digest=digest)

    @property
    def registry_host(self) -> str:
        """Where the registry answers (`docker.io` is served by `registry-1.docker.io`)."""
        return registry_host(self.host)

    @property
    def name(self) -> str:
        """The last path element: the app name of an app URI."""
        return self.repository.rsplit("/", 1)[-1]

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    def with_digest(self, digest: str) -> "PinnedRef":
        """A reference to another blob of the same repository (how app children are addressed)."""
        return PinnedRef(self.host, self.repository, digest)

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}@{self.digest}"


def _split_host(locator: str) -> tuple[str, str]:
    """`host/path` -> (host, path), with Docker's defaults for Docker Hub (see the module doc)."""
    first, slash, rest = locator.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        host, path = first, rest
    else:
        host, path = DOCKER_HUB, locator
    if host in (DOCKER_HUB, DOCKER_HUB_LEGACY):
        host = DOCKER_HUB
        path = path if "/" in path else f"library/{path}"
    return host, path


def registry_host(host: str) -> str:
    """The host to connect to for a reference's host (`docker.io` -> `registry-1.docker.io`)."""
    return DOCKER_HUB_REGISTRY if host == DOCKER_HUB else host
