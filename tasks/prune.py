"""Remove what the new Target no longer needs (node `prune:<target>`), after it was committed.

Old project folders (kept until now so a running container never lost its files), projects
of apps that left the Target, store blobs no app of the Target references, every partial
download (all of this update's fetches are done: what is left is an abandoned update's), and
the images only old versions used. Images are removed by the local tags fioup-flow loaded
them under and only when no container uses them; with `pacman.prune_unused_images` every
unused image goes.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import docker
import docker.errors

from fioup_flow.composeapp import AppTreeLoader
from fioup_flow.store import BlobStore
from fioup_flow.targets import App
from fioup_flow.task import Node, TaskContext
from tasks.imagetar import local_tag
from tasks.install import MARKER, PREVIOUS, STAGING

KIND = "prune"
OUR_TAG = re.compile(r":[0-9a-f]{64}$")


def node(target_name: str, apps: dict[str, str], all_unused_images: bool) -> Node:
    return Node(id=f"prune:{target_name}", kind=KIND,
                params={"apps": dict(sorted(apps.items())), "all_unused_images": all_unused_images},
                resource="docker")


class Prune:
    kind = KIND

    def __init__(self, store: BlobStore, compose_root: Path, engine: docker.DockerClient):
        self.store = store
        self.root = compose_root
        self.engine = engine

    def _keep(self, node: Node) -> tuple[set[str], set[str]]:
        """Blob digests and image tags that the Target's apps use."""
        loader = AppTreeLoader(self.store, registry=None)
        blobs, tags = set(), set()
        for name, uri in node.params["apps"].items():
            tree = loader.load(App(name, uri))
            blobs.update(b.digest for b in tree.blobs())
            tags.update(local_tag(i) for i in tree.images())
        return blobs, tags

    def _stale_folders(self, node: Node) -> list[Path]:
        stale = [self.root / PREVIOUS, self.root / STAGING]
        if self.root.is_dir():
            stale += [p for p in self.root.iterdir()
                      if (p / MARKER).exists() and p.name not in node.params["apps"]]
        return [p for p in stale if p.exists()]

    def _stale_tags(self, keep_tags: set[str]) -> list[str]:
        tags = (t for image in self.engine.api.images() for t in (image.get("RepoTags") or []))
        return sorted(t for t in tags if OUR_TAG.search(t) and t not in keep_tags)

    def is_done(self, node: Node) -> bool:
        keep_blobs, keep_tags = self._keep(node)
        return (not self._stale_folders(node) and set(self.store.digests()) <= keep_blobs
                and not any(self.store.partials()) and not self._stale_tags(keep_tags))

    def run(self, node: Node, ctx: TaskContext) -> None:
        keep_blobs, keep_tags = self._keep(node)
        for folder in self._stale_folders(node):
            shutil.rmtree(folder, ignore_errors=True)
        for digest in set(self.store.digests()) - keep_blobs:
            self.store.remove(digest)
        self.store.sync()
        self.store.discard_partials()
        for tag in self._stale_tags(keep_tags):
            try:
                self.engine.api.remove_image(tag)
            except docker.errors.APIError:
                pass  # still used by a container: it stays, and is tried again next prune
        if node.params["all_unused_images"]:
            self.engine.images.prune(filters={"dangling": False})
