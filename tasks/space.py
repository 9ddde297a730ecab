"""Check that the update fits before fetching anything (node `space:<target>`), exit code 41 if not.

Runs again on every resume (it has no effect to be "in place"), so an update refused for lack of
space goes on once space was freed, and counts only what is still missing at that moment. It
first drops the partial downloads of blobs this update does not fetch (an abandoned update's):
the one update in progress is this one, so nothing will resume them, and they only take room.
"""

from __future__ import annotations

from fioup_flow.diskspace import StorageStat, storage_stat
from fioup_flow.errors import NoSpaceError
from fioup_flow.store import BlobStore
from fioup_flow.task import Node, TaskContext

KIND = "space"


def node(target_name: str, blobs: list[tuple[str, int, str, int | None]]) -> Node:
    """`blobs`: (digest, size, blob kind, unpacked size if known) of everything the update needs."""
    return Node(id=f"space:{target_name}", kind=KIND, params={"blobs": [list(b) for b in blobs]})


def _unpacked(kind: str, usage: int | None) -> int | None:
    """None for a blob that is not a layer; a layer's unpacked size, or -1 when it is unknown."""
    if kind != "layer":
        return None
    return usage if usage is not None else -1


class SpaceCheck:
    kind = KIND

    def __init__(self, store: BlobStore, watermark: int):
        """`watermark` comes from the config at run time: a resume after it was raised sees the new one."""
        self.store = store
        self.watermark = watermark

    def stat(self, node: Node) -> StorageStat:
        missing = [(size, self.store.partial_size(digest), _unpacked(kind, usage))
                   for digest, size, kind, usage in node.params["blobs"] if not self.store.has(digest, size)]
        return storage_stat(self.store.root, self.watermark, missing)

    def is_done(self, node: Node) -> bool:
        return all(self.store.has(digest, size) for digest, size, _, _ in node.params["blobs"])

    def run(self, node: Node, ctx: TaskContext) -> None:
        self.store.discard_partials(keep={digest for digest, _, _, _ in node.params["blobs"]})
        stat = self.stat(node)
        if not stat.fits:
            raise NoSpaceError(f"not enough storage for the update: {stat.describe()}")
