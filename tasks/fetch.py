"""Fetch one blob from the registry, or an offline bundle, into the blob store (node `fetch:sha256:<hex>`).

Done when the store holds the blob under its digest, which the store only allows once the
bytes verified. A download cut off (by the network, a kill or a power cut) resumes from what
the ingest area kept; a resumed download that fails to verify starts once more from zero. A
signal or a cancel stops the download at its next chunk, the partial kept and synced.
"""

from __future__ import annotations

from collections.abc import Iterable

import requests

from fioup_flow.errors import FetchError
from fioup_flow.reference import PinnedRef
from fioup_flow.registry import BlobSource
from fioup_flow.retry import is_transient
from fioup_flow.store import BlobStore, DigestMismatchError, PartialCorruptError
from fioup_flow.task import Node, TaskContext, TransientError
from fioup_flow.throttle import TokenBucket

KIND = "fetch"


class TransferInterrupted(FetchError, TransientError):
    """The connection broke mid-transfer: worth retrying (the partial is kept), exit 40 if it persists."""


def node(uri: str, size: int, blob_kind: str) -> Node:
    digest = uri.rsplit("@", 1)[1]
    return Node(id=f"fetch:{digest}", kind=KIND, params={"uri": uri, "size": size, "blob": blob_kind},
                resource="network", size=size)


class FetchBlob:
    kind = KIND

    def __init__(self, store: BlobStore, source: BlobSource, bucket: TokenBucket | None = None):
        self.store = store
        self.source = source
        self.bucket = bucket
        # registry host -> why it was given up on: once a fetch retried through a whole budget
        # without reaching it, the blobs after it fail at once instead of each waiting out a
        # budget of its own (a dead registry cost budget x blobs); the next run tries again.
        self.out_of_reach: dict[str, str] = {}

    def _open(self, ref: PinnedRef, offset: int) -> Iterable[bytes]:
        chunks = self.source.open_blob(ref, offset)
        return self.bucket.limit(chunks) if self.bucket else chunks

    def is_done(self, node: Node) -> bool:
        ref = PinnedRef.parse(node.params["uri"])
        return self.store.has(ref.digest, node.params["size"])

    def run(self, node: Node, ctx: TaskContext) -> None:
        ref = PinnedRef.parse(node.params["uri"])
        size = int(node.params["size"])

        def download() -> None:
            self.store.ingest(ref.digest, size, lambda offset: ctx.checked(self._open(ref, offset)),
                              progress=lambda done: ctx.progress(done, size))

        if ref.host in self.out_of_reach:
            raise FetchError(f"{ref}: not tried, the registry was out of reach earlier in this run "
                             f"({self.out_of_reach[ref.host]})")
        try:
            try:
                download()
            except PartialCorruptError:
                download()  # the partial was thrown away: once more from zero
        except DigestMismatchError as exc:
            raise self.source.damaged(ref, str(exc)) from exc
        except FetchError as exc:
            if is_transient(exc.__cause__):  # the retries ran out on the link, not on this blob
                self.out_of_reach[ref.host] = str(exc)
            raise
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise TransferInterrupted(f"fetching {ref}: the connection failed mid-transfer ({exc.__class__.__name__})") from exc
