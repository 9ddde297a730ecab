"""Check that the update fits before fetching anything (node `space:<target>`), exit code 41 if not.

Runs again on every resume (it has no effect to be "in place"), so an update refused for lack of
space goes on once space was freed, and counts only what is still missing at that moment.
"""

from __future__ import annotations

from fioup_flow.diskspace import StorageStat, storage_stat
from fioup_flow.errors import NoSpaceError
from fioup_flow.store import BlobStore
from fioup_flow.task import Node, TaskContext

KIND = "space"


def node(target_name: str, blobs: list[tuple[str, int, str]], watermark: int) -> Node:
    """`blobs`: (digest, size, blob kind) of everything the update needs."""
    return Node(id=f"space:{target_name}", kind=KIND,
                params={"blobs": [list(b) for b in blobs], "watermark": watermark})


class SpaceCheck:
    kind = KIND

    def __init__(self, store: BlobStore):
        self.store = store

    def stat(self, node: Node) -> StorageStat:
        missing = [(size, self.store.partial_size(digest), kind == "layer")
                   for digest, size, kind in node.params["blobs"] if not self.store.has(digest, size)]
        return storage_stat(self.store.root, int(node.params["watermark"]), missing)

    def is_done(self, node: Node) -> bool:
        return all(self.store.has(digest, size) for digest, size, _ in node.params["blobs"])

    def run(self, node: Node, ctx: TaskContext) -> None:
        stat = self.stat(node)
        if not stat.fits:
            raise NoSpaceError(f"not enough storage for the update: {stat.describe()}")
