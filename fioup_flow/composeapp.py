"""A compose app as the registry holds it: app manifest, bundle, service images, their blobs.

`AppTreeLoader.load(app)` walks an app from its URI down to every blob an install needs
(composeapp's "app tree", `composeapp.md` section 1.5): app manifest -> bundle (+ bundle
index) -> for each service the pinned image (index -> the manifest for this platform) ->
config and layers. The small documents on the way are fetched into the blob store, verified,
and read from there, so a second walk (a resume, a status check) needs no network at all.
"""

from __future__ import annotations

import gzip
import io
import json
import platform
import tarfile
from dataclasses import dataclass, field
from typing import Any

import yaml

from fioup_flow.errors import FetchError, InstallError
from fioup_flow.reference import PinnedRef, ReferenceError
from fioup_flow.registry import RegistryClient
from fioup_flow.store import BlobStore
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
COMPOSE_MAX = 1024 * 1024
BUNDLE_INDEX_MAX = 1024 * 1024
BUNDLE_MAX = 64 * 1024 * 1024  # metadata walk only: larger bundles are fetched as data, not parsed here


def host_platform() -> tuple[str, str]:
    machine = platform.machine()
    return "linux", {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


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
class AppTree:
    name: str
    uri: str
    manifest: Blob
    bundle: Blob
    bundle_index: Blob | None
    services: dict[str, Image] = field(default_factory=dict)
    layers_meta: Blob | None = None
    layer_usage: dict[str, int] = field(default_factory=dict)  # digest -> bytes on disk once unpacked

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


def read_compose(bundle: bytes, app: str) -> dict[str, Any]:
    """The app's `docker-compose.yml` from its bundle (gzip tar), parsed; InstallError if it is not sane."""
    try:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(bundle)), mode="r:") as tar:
            member = next((m for m in tar.getmembers() if m.name.lstrip("./") == COMPOSE_FILE and m.isfile()), None)
            if member is None:
                raise InstallError(f"app {app}: the bundle has no {COMPOSE_FILE}")
            if member.size > COMPOSE_MAX:
                raise InstallError(f"app {app}: {COMPOSE_FILE} is larger than {COMPOSE_MAX} bytes")
            text = tar.extractfile(member).read()
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise InstallError(f"app {app}: the bundle is not a readable gzip tar: {exc}") from exc
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
    """Walks apps through the store, fetching the small documents it lacks from the registry."""

    def __init__(self, store: BlobStore, registry: RegistryClient | None):
        self.store = store
        self.registry = registry
        self.platform = host_platform()

    def _bytes(self, ref: PinnedRef, kind: str, size: int | None, limit: int) -> bytes:
        if not self.store.has(ref.digest):
            if self.registry is None:
                raise FetchError(f"{kind} {ref} is not in the store and there is no registry to fetch it from")
            if kind in ("app-manifest", "image-index", "image-manifest", "image-root"):
                data, _ = self.registry.manifest(ref)
                self.store.put_bytes(ref.digest, data)
            else:
                if size is None or size > limit:
                    raise FetchError(f"{kind} {ref} is too large to read ({size} bytes)")
                self.store.ingest(ref.digest, size, lambda offset: self.registry.open_blob(ref, offset))
        return self.store.read(ref.digest, limit)

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
        compose = read_compose(self._bytes(bundle.ref, "bundle", bundle.size, BUNDLE_MAX), app.name)
        services = {service: self._image(image_ref, app.name)
                    for service, image_ref in pinned_images(compose, app.name).items()}
        meta_blob, usage = self._layers_meta(ref, layers[1:2])
        return AppTree(app.name, app.uri, Blob(app.uri, len(manifest_bytes), "app-manifest"), bundle, index, services,
                       meta_blob, usage)

    def _layers_meta(self, ref: PinnedRef, descriptors: list[dict[str, Any]]) -> tuple[Blob | None, dict[str, int]]:
        """composeapp's layers meta (layer 1), if any, and from it what each layer takes once unpacked.

        Without it the space check falls back to fioup's estimate (five times the compressed size).
        """
        if not descriptors or (descriptors[0].get("annotations") or {}).get(LAYERS_META_ANNOTATION) != "v1":
            return None, {}
        blob = Blob(str(ref.with_digest(descriptors[0]["digest"])), int(descriptors[0]["size"]), "layers-meta")
        meta = _json(self._bytes(blob.ref, blob.kind, blob.size, BUNDLE_INDEX_MAX), "layers meta")
        layers = (meta.get(self.platform[1]) or {}).get("layers") or {}
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
        os_name, arch = self.platform
        matches = [m for m in index.get("manifests", [])
                   if (m.get("platform") or {}).get("os") == os_name
                   and (m.get("platform") or {}).get("architecture") == arch]
        if len(matches) != 1:
            raise FetchError(f"app {app}: image {ref} has {len(matches)} manifests for {os_name}/{arch}, not one")
        return matches[0]
