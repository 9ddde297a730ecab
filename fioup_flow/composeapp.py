"""A compose app as the registry holds it: app manifest, bundle, service images, their blobs.

`AppTreeLoader.load(app)` walks an app from its URI down to every blob an install needs
(composeapp's "app tree", `composeapp.md` section 1.5): app manifest -> bundle (+ bundle
index) -> for each service the pinned image (index -> the manifest for this platform) ->
config and layers. The small documents on the way are fetched into the blob store, verified,
and read from there, so a second walk (a resume, a status check) needs no network at all.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, BinaryIO

import yaml

from fioup_flow.bundle import COMPOSE_MAX, MAX_TOTAL, lands_at
from fioup_flow.errors import FetchError, InstallError
from fioup_flow.keylock import KeyLocks
from fioup_flow.platforms import Platform, host_platform, matching
from fioup_flow.reference import PinnedRef, ReferenceError
from fioup_flow.registry import BlobSource
from fioup_flow.store import BlobStore, DigestMismatchError
from fioup_flow.targets import App

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
BUNDLE_TYPE = "application/octet-stream"
INDEX_DIGEST_ANNOTATION = "org.foundries.app.bundle.index.digest"
INDEX_SIZE_ANNOTATION = "org.foundries.app.bundle.index.size"
LAYERS_META_ANNOTATION = "layers-meta"
COMPOSE_FILE = "docker-compose.yml"
APP_MANIFEST_MAX = 50 * 1024
IMAGE_ROOT_MAX = 100 * 1024
BUNDLE_INDEX_MAX = 1024 * 1024
MANIFEST_KINDS = ("app-manifest", "image-index", "image-manifest", "image-root")


@dataclass(frozen=True)
class Blob:
    """One blob of an app: where it comes from, how big it is, what it is for."""

    uri: str  # host/repository@sha256:..., the repository it is fetched from
    size: int
    kind: str  # app-manifest | bundle | bundle-index | image-index | image-manifest | image-config | layer

    @property
    def digest(self) -> str:
        return self.uri.rsplit("@", 1)[1]

    @property
    def ref(self) -> PinnedRef:
        return PinnedRef.parse(self.uri)

    @property
    def is_manifest(self) -> bool:
        return self.kind in ("app-manifest", "image-index", "image-manifest")


@dataclass(frozen=True)
class Image:
    """A service image: the reference pinned in the compose file and what it resolves to here."""

    pinned: str
    root: Blob  # what `pinned` names: an index or a manifest
    manifest: Blob  # the platform manifest (== root when the root is a manifest)
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def image_id(self) -> str:
        """The ID the engine gives the image once loaded: the config's digest."""
        return self.config.digest


@dataclass(frozen=True)
class Expectation:
    """What running a service well means, read from the compose file.

    `created`: "yes" (compose creates it), "no" (`deploy.replicas: 0` or `scale: 0`), or
    "profile" (only when one of its profiles is active, which the app's `.env` or the device's
    `[compose_env]` may say: judged if compose made it, not waited for otherwise).
    `may_stop`: a one-shot, fine once it exited 0: its restart policy lets it stop (`no`, the
    default, or `on-failure`), or another service waits for it with `service_completed_successfully`.
    """

    created: str = "yes"
    may_stop: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"created": self.created, "may_stop": self.may_stop}


# restart policies that let a container stay stopped: compose's `restart` values and the
# `deploy.restart_policy.condition` ones (compose maps `none` to `no` and `any` to `always`)
STOPPING_POLICIES = ("no", "none", "on-failure")


def restart_policy(spec: dict[str, Any]) -> str:
    """The service's restart policy name (`no` when none is set, as compose and Docker default)."""
    restart = spec.get("restart")
    if restart is None:
        restart = ((spec.get("deploy") or {}).get("restart_policy") or {}).get("condition", "no")
    if restart is False:  # YAML 1.1 reads an unquoted `restart: no` as false
        return "no"
    return str(restart).split(":", 1)[0].strip().lower()


def _completion_waited_for(services: dict[str, Any]) -> set[str]:
    """The services another one waits on with `condition: service_completed_successfully`."""
    waited = set()
    for spec in services.values():
        depends = (spec or {}).get("depends_on") if isinstance(spec, dict) else None
        if isinstance(depends, dict):
            waited |= {name for name, how in depends.items()
                       if isinstance(how, dict) and how.get("condition") == "service_completed_successfully"}
    return waited


def _no_replicas(spec: dict[str, Any]) -> bool:
    replicas = (spec.get("deploy") or {}).get("replicas", spec.get("scale"))
    return replicas is not None and str(replicas).strip() == "0"


def service_expectations(compose: dict[str, Any]) -> dict[str, Expectation]:
    """Per service of a parsed compose file, what running it well means (see `Expectation`)."""
    services = compose["services"]
    waited = _completion_waited_for(services)
    expect = {}
    for name, spec in services.items():
        spec = spec if isinstance(spec, dict) else {}
        created = "no" if _no_replicas(spec) else "profile" if spec.get("profiles") else "yes"
        expect[name] = Expectation(created, restart_policy(spec) in STOPPING_POLICIES or name in waited)
    return expect


@dataclass(frozen=True)
class AppTree:
    name: str
    uri: str
    manifest: Blob
    bundle: Blob
    bundle_index: Blob | None
    services: dict[str, Image] = field(default_factory=dict)
    layers_meta: Blob | None = None
    layer_usage: dict[str, int] = field(default_factory=dict)  # digest -> bytes on disk once unpacked
    expect: dict[str, Expectation] = field(default_factory=dict)  # service -> what running it well means

    def images(self) -> list[Image]:
        """Each distinct image once, in service order (two services may share one)."""
        seen: dict[str, Image] = {}
        for service in sorted(self.services):
            seen.setdefault(self.services[service].pinned, self.services[service])
        return list(seen.values())

    def blobs(self) -> list[Blob]:
        """Every blob of the app once, metadata first."""
        found: dict[str, Blob] = {}
        heads = [self.manifest, self.bundle] + [b for b in (self.bundle_index, self.layers_meta) if b]
        for blob in heads:
            found.setdefault(blob.digest, blob)
        for image in self.images():
            for blob in (image.root, image.manifest, image.config, *image.layers):
                found.setdefault(blob.digest, blob)
        return list(found.values())


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise FetchError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise FetchError(f"{what} is not a JSON object")
    return doc


def is_compose_file(name: str) -> bool:
    """Whether a bundle entry is the compose file compose runs: it lands at `docker-compose.yml` in the project.

    composeapp looks for an entry named exactly `docker-compose.yml`; `./docker-compose.yml`
    lands at the same place when unpacked, so it is the same file. `.docker-compose.yml`,
    `../docker-compose.yml` and `x/docker-compose.yml` are not.
    """
    return lands_at(name) == PurePosixPath(COMPOSE_FILE)


def _compose_bytes(bundle: BinaryIO, app: str) -> bytes:
    """The first compose file entry of the gzip tar `bundle`, read as a stream and no further.

    A second entry for the same path makes the unpacker refuse the bundle, so the first one is
    the file compose would run.
    """
    try:
        with tarfile.open(fileobj=bundle, mode="r|gz") as tar:
            for member in tar:
                if not is_compose_file(member.name):
                    continue
                if not member.isfile():
                    raise InstallError(f"app {app}: the bundle's {COMPOSE_FILE} is not a regular file")
                if member.size > COMPOSE_MAX:
                    raise InstallError(f"app {app}: {COMPOSE_FILE} is larger than {COMPOSE_MAX} bytes")
                return tar.extractfile(member).read()
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise InstallError(f"app {app}: the bundle is not a readable gzip tar: {exc}") from exc
    raise InstallError(f"app {app}: the bundle has no {COMPOSE_FILE}")


def read_compose(bundle: BinaryIO, app: str) -> dict[str, Any]:
    """The app's `docker-compose.yml` from its bundle (gzip tar), parsed; InstallError if it is not sane."""
    text = _compose_bytes(bundle, app)
    try:
        compose = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InstallError(f"app {app}: {COMPOSE_FILE} does not parse: {exc}") from exc
    if not isinstance(compose, dict) or not isinstance(compose.get("services"), dict) or not compose["services"]:
        raise InstallError(f"app {app}: {COMPOSE_FILE} has no services")
    return compose


def pinned_images(compose: dict[str, Any], app: str) -> dict[str, PinnedRef]:
    """Each service's image, which must be pinned by digest (a tag could change under us)."""
    images = {}
    for service, spec in compose["services"].items():
        image = (spec or {}).get("image") if isinstance(spec, dict) else None
        if not image:
            raise InstallError(f"app {app}: service {service} has no image")
        try:
            images[service] = PinnedRef.parse(str(image))
        except ReferenceError as exc:
            raise InstallError(f"app {app}: service {service}: {exc}") from exc
    return images


class AppTreeLoader:
    """Walks apps through the store, fetching the small documents it lacks from the registry (or
    another `BlobSource`: an offline bundle)."""

    def __init__(self, store: BlobStore, registry: BlobSource | None, host: Platform | None = None):
        self.store = store
        self.registry = registry
        self.platform = host or host_platform()
        self._fetching = KeyLocks()  # by digest: held while one walk fetches the blob

    def load_all(self, apps: Iterable[App]) -> dict[str, AppTree]:
        """Every app's tree, the apps walked at once: a walk spends its time waiting on the registry
        and on the disk (each document it fetches is synced into the store), not on the CPU. A
        failure is the first failing app's, in the order given, as walking them in turn would say."""
        apps = list(apps)
        if len(apps) < 2:
            return {app.name: self.load(app) for app in apps}
        with ThreadPoolExecutor(max_workers=len(apps), thread_name_prefix="walk") as pool:
            return dict(zip((app.name for app in apps), pool.map(self.load, apps)))

    def _fetched(self, ref: PinnedRef, kind: str, size: int | None, limit: int) -> None:
        """Make sure the blob `ref` is in the store: fetched (at most `limit` bytes) and verified if not.
        Two walks needing one blob (two apps of one image) fetch it once, one after the other."""
        if self.store.has(ref.digest):
            return
        with self._fetching.held(ref.digest):
            self._fetch(ref, kind, size, limit)

    def _fetch(self, ref: PinnedRef, kind: str, size: int | None, limit: int) -> None:
        if self.store.has(ref.digest):
            return
        if self.registry is None:
            raise FetchError(f"{kind} {ref} is not in the store and there is no registry to fetch it from")
        if kind in MANIFEST_KINDS:
            data, _ = self.registry.manifest(ref, limit)
            self.store.put_bytes(ref.digest, data)
        else:
            if size is None or size > limit:
                raise FetchError(f"{kind} {ref} is too large to read ({size} bytes)")
            try:
                self.store.ingest(ref.digest, size, lambda offset: self.registry.open_blob(ref, offset))
            except DigestMismatchError as exc:
                raise self.registry.damaged(ref, str(exc)) from exc

    def _bytes(self, ref: PinnedRef, kind: str, size: int | None, limit: int) -> bytes:
        """A small blob (a manifest, an index), from the store, fetched first if need be."""
        self._fetched(ref, kind, size, limit)
        return self.store.read(ref.digest, limit)

    def _compose(self, bundle: Blob, app: str) -> dict[str, Any]:
        """The bundle's compose file, parsed: the bundle is fetched if need be and read as a stream."""
        # composeapp's one cap on a bundle. It is fetched into the store as the plan would fetch it
        # anyway (streamed to disk), and read from there only as far as its compose file.
        self._fetched(bundle.ref, bundle.kind, bundle.size, MAX_TOTAL)
        with self.store.open(bundle.digest) as data:
            return read_compose(data, app)

    def load(self, app: App) -> AppTree:
        ref = app.ref
        manifest_bytes = self._bytes(ref, "app-manifest", None, APP_MANIFEST_MAX)
        manifest = _json(manifest_bytes, f"app {app.name}: the app manifest")
        if manifest.get("mediaType") != OCI_MANIFEST:
            raise FetchError(f"app {app.name}: the app manifest has media type {manifest.get('mediaType')!r}")
        layers = manifest.get("layers") or []
        if not layers or layers[0].get("mediaType") != BUNDLE_TYPE:
            raise FetchError(f"app {app.name}: the app manifest has no bundle layer")
        bundle = Blob(str(ref.with_digest(layers[0]["digest"])), int(layers[0]["size"]), "bundle")
        annotations = layers[0].get("annotations") or {}
        index = None
        if INDEX_DIGEST_ANNOTATION in annotations:
            index = Blob(str(ref.with_digest(annotations[INDEX_DIGEST_ANNOTATION])),
                         int(annotations.get(INDEX_SIZE_ANNOTATION, 0)), "bundle-index")
            self._bytes(index.ref, index.kind, index.size, BUNDLE_INDEX_MAX)
        compose = self._compose(bundle, app.name)
        services = {service: self._image(image_ref, app.name)
                    for service, image_ref in pinned_images(compose, app.name).items()}
        meta_blob, usage = self._layers_meta(ref, layers[1:2])
        return AppTree(app.name, app.uri, Blob(app.uri, len(manifest_bytes), "app-manifest"), bundle, index, services,
                       meta_blob, usage, service_expectations(compose))

    def _layers_meta(self, ref: PinnedRef, descriptors: list[dict[str, Any]]) -> tuple[Blob | None, dict[str, int]]:
        """composeapp's layers meta (layer 1), if any, and from it what each layer takes once unpacked.

        Without it the space check falls back to fioup's estimate (five times the compressed size).
        """
        if not descriptors or (descriptors[0].get("annotations") or {}).get(LAYERS_META_ANNOTATION) != "v1":
            return None, {}
        blob = Blob(str(ref.with_digest(descriptors[0]["digest"])), int(descriptors[0]["size"]), "layers-meta")
        meta = _json(self._bytes(blob.ref, blob.kind, blob.size, BUNDLE_INDEX_MAX), "layers meta")
        layers = (meta.get(self.platform.architecture) or {}).get("layers") or {}
        return blob, {digest: int(info["usage"]) for digest, info in layers.items() if "usage" in info}

    def _image(self, ref: PinnedRef, app: str) -> Image:
        data = self._bytes(ref, "image-root", None, IMAGE_ROOT_MAX)
        doc = _json(data, f"app {app}: image {ref}")
        media_type = doc.get("mediaType", "")
        if media_type in (OCI_INDEX, DOCKER_LIST) or ("manifests" in doc and "layers" not in doc):
            root = Blob(str(ref), len(data), "image-index")
            child = self._platform_manifest(doc, ref, app)
            manifest = Blob(str(ref.with_digest(child["digest"])), int(child["size"]), "image-manifest")
            doc = _json(self._bytes(manifest.ref, "image-manifest", None, IMAGE_ROOT_MAX), f"image {manifest.uri}")
        elif media_type in (OCI_MANIFEST, DOCKER_MANIFEST) or "layers" in doc:
            root = manifest = Blob(str(ref), len(data), "image-manifest")
        else:
            raise FetchError(f"app {app}: image {ref} has an unsupported media type {media_type!r}")
        config = Blob(str(ref.with_digest(doc["config"]["digest"])), int(doc["config"]["size"]), "image-config")
        layers = tuple(Blob(str(ref.with_digest(layer["digest"])), int(layer["size"]), "layer")
                       for layer in doc.get("layers", []))
        return Image(str(ref), root, manifest, config, layers)

    def _platform_manifest(self, index: dict[str, Any], ref: PinnedRef, app: str) -> dict[str, Any]:
        """The one child of the index this host runs (composeapp requires exactly one)."""
        manifests = index.get("manifests")
        matches = matching(manifests if isinstance(manifests, list) else [], self.platform)
        if len(matches) != 1:
            raise FetchError(f"app {app}: image {ref} has {len(matches)} manifests for {self.platform}, not one")
        return matches[0]
