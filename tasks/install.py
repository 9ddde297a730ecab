"""Install an app version (node `install:<app>@<digest>`): images into the engine, project on disk.

All of this runs while the old version still serves: loading images and unpacking the project
do not touch running containers, so the window between stopping the old version and starting
the new one holds only `compose down` and `compose up`. The old project folder is kept as
`.previous/<app>` until the update is pruned, so nothing a running container mounts vanishes.

Done when every image of the app is in the engine under its local tag with the expected ID,
and the project folder holds this version (marker file) and matches the bundle index.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import docker
import docker.errors
import yaml

from fioup_flow.bundle import index_mismatches, unpack
from fioup_flow.composeapp import AppTree, AppTreeLoader, Image
from fioup_flow.durable import fsync_dir, make_dirs, write_atomic
from fioup_flow.errors import FetchError, InstallError
from fioup_flow.store import BlobStore
from fioup_flow.targets import App
from fioup_flow.task import Node, TaskContext, TransientError
from tasks import appstate
from tasks.compose import OVERRIDE_FILE, Compose
from tasks.imagetar import local_tag, save_stream

KIND = "install"


class ImageLoadFailed(InstallError, TransientError):
    """The engine refused to load an image the store verified: the engine's trouble (its disk, its
    state), not the Target's; retried, and never a reason to mark the Target bad (as aktualizr-lite
    retries an image-load failure at its next cycle instead of marking the Target failing)."""
MARKER = ".fioup-flow-app.json"
STAGING = ".staging"
PREVIOUS = ".previous"


def node(app: str, uri: str, size: int) -> Node:
    """Installs are of the `disk` class, two at once: an install is the engine writing an image's
    layers and a project unpacked, and touches nothing that runs. Starts and stops stay one at a
    time (`docker`): a start may restart the engine (`tasks.portleak`), which nothing else that
    starts should live through."""
    digest = uri.rsplit("@", 1)[1]
    return Node(id=f"install:{app}@{digest}", kind=KIND, params={"app": app, "uri": uri}, resource="disk",
                size=size)


def installed_uri(project: Path) -> str | None:
    """The app URI the project folder was installed from, or None."""
    try:
        return json.loads((project / MARKER).read_text())["uri"]
    except (OSError, ValueError, KeyError):
        return None


class InstallApp:
    kind = KIND

    def __init__(self, store: BlobStore, compose_root: Path, engine: docker.DockerClient, compose: Compose):
        self.store = store
        self.root = compose_root
        self.engine = engine
        self.compose = compose
        self.loader = AppTreeLoader(store, registry=None)

    def _tree(self, node: Node) -> AppTree:
        return self.loader.load(App(node.params["app"], node.params["uri"]))

    def _missing_images(self, tree: AppTree) -> list[Image]:
        return [i for i in tree.images() if appstate.image_id(self.engine, local_tag(i)) != i.image_id]

    def _project_ok(self, tree: AppTree) -> bool:
        project = self.root / tree.name
        if installed_uri(project) != tree.uri:
            return False
        return not tree.bundle_index or not index_mismatches(project, self._index(tree))

    def _index(self, tree: AppTree) -> dict[str, str]:
        return json.loads(self.store.read(tree.bundle_index.digest)) if tree.bundle_index else {}

    def is_done(self, node: Node) -> bool:
        try:
            tree = self._tree(node)
        except FetchError:
            return False
        return not self._missing_images(tree) and self._project_ok(tree)

    def run(self, node: Node, ctx: TaskContext) -> None:
        try:
            tree = self._tree(node)
        except FetchError as exc:
            raise InstallError(f"app {node.params['app']}: {exc}") from exc
        self._load_images(tree, ctx)
        if not self._project_ok(tree):
            self._put_in_place(self._stage(tree), tree.name)

    def _load_images(self, tree: AppTree, ctx: TaskContext) -> None:
        """Stream the missing images into the engine; a stop request ends the stream at its next
        chunk, and the engine drops a load cut short whole (as after a power cut)."""
        missing = self._missing_images(tree)
        if not missing:
            return
        try:
            for message in self.engine.api.load_image(ctx.checked(save_stream(missing, self.store))):
                if "error" in message or "errorDetail" in message:
                    raise ImageLoadFailed(f"app {tree.name}: the engine refused an image: "
                                          f"{message.get('error', message)}")
        except docker.errors.APIError as exc:
            raise ImageLoadFailed(f"app {tree.name}: loading images failed: {exc.explanation or exc}") from exc
        still = self._missing_images(tree)
        if still:
            raise InstallError(f"app {tree.name}: images not in the engine after loading: "
                               + ", ".join(local_tag(i) for i in still))

    def _stage(self, tree: AppTree) -> Path:
        """Unpack, verify and validate the project beside the live one; returns the staging folder."""
        staging = self.root / STAGING / tree.name
        with self.store.open(tree.bundle.digest) as bundle:
            unpack(bundle, staging, tree.name)
        problems = index_mismatches(staging, self._index(tree))
        if problems:
            shutil.rmtree(staging, ignore_errors=True)
            raise InstallError(f"app {tree.name}: the unpacked bundle does not match its index: {'; '.join(problems)}")
        override = {"services": {service: {"image": local_tag(image), "pull_policy": "never"}
                                 for service, image in sorted(tree.services.items())}}
        write_atomic(staging / OVERRIDE_FILE, yaml.safe_dump(override, sort_keys=True).encode())
        self.compose.config_check(tree.name, staging, InstallError)
        write_atomic(staging / MARKER, json.dumps({"app": tree.name, "uri": tree.uri}).encode())
        return staging

    def _put_in_place(self, staging: Path, app: str) -> None:
        """Swap the staged project in; the old one moves to `.previous/<app>` until prune."""
        project = self.root / app
        previous = self.root / PREVIOUS / app
        if project.exists():
            make_dirs(previous.parent)
            shutil.rmtree(previous, ignore_errors=True)
            os.rename(project, previous)
            fsync_dir(previous.parent)
        os.rename(staging, project)
        fsync_dir(self.root)
        fsync_dir(staging.parent)
