"""OCI references pinned by digest: `host[:port]/path/name@sha256:<hex>`.

App URIs in Targets and service images in compose files are both of this form; the app name of
an app URI is the last path element, which fioup requires to match the app's key in the Target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")


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
        host, slash, repository = locator.partition("/")
        if not slash or not _HOST.match(host) or ("." not in host and ":" not in host and host != "localhost"):
            raise ReferenceError(f"{ref!r} does not name a registry host")
        repository = repository.split(":", 1)[0]  # a tag beside the digest is allowed and ignored
        if not repository or not all(_PATH_COMPONENT.match(c) for c in repository.split("/")):
            raise ReferenceError(f"{ref!r} has an invalid repository path")
        return cls(host=host, repository=repository, digest=digest)

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
