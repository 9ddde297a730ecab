"""`fioup-flow-factory publish`: build, push and list compose apps as Targets of the factory.

An app folder is a `docker-compose.yml` plus any files the app needs at run time. Each service
either names an image already pinned by digest, or carries a build recipe for the factory:

    services:
      web:
        image: shellhttpd              # image name: pushed as <factory>/<name> in the registry
        x-fioup-build:
          files: images/web            # folder copied to / in the image (its own layer)
          cmd: ["sh", "/app/serve.sh"] # also: entrypoint, env (map), expose (ports),
          healthcheck: {test: [...], interval: 2s}   # workdir
          registry: third-party        # optional: push to the third party's registry instead

The published bundle (layer 0 of the app) is the folder without `images/` (the build inputs),
its compose file rewritten as composectl publish does: `image:` pinned to
`127.0.0.1:<port>/<factory>/<name>@sha256:<manifest digest>`, `x-fioup-build` removed, label
`io.compose-spec.config-hash` added. An image built with `registry: third-party` is pushed to the
registry standing for a third party's (anonymous pull, like Docker Hub's public images) under
its own name, not the factory's, and pinned as `127.0.0.1:<its port>/<name>@sha256:<digest>`.
Sample apps ship in the package: `sample:<app>/<version>` (e.g. `sample:shellhttpd/v1`) names
`fioup_flow/factory/samples/<app>/<version>`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path

import click
import yaml

from fioup_flow.errors import NotConfiguredError, UsageError
from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.images import (
    FS_BLOCK_SIZE,
    BlobDir,
    BuiltImage,
    ImageSpec,
    build_image,
    host_arch,
    tar_entry,
)
from fioup_flow.factory.registry import RegistryPusher, third_party
from fioup_flow.factory.tufrepo import TufRepository
from fioup_flow.tuf.flavour import canonical_bytes

APP_MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
APP_ARTIFACT_TYPE = "application/vnd.fio+compose-app"
EMPTY_CONFIG_TYPE = "application/vnd.oci.empty.v1+json"
BUNDLE_TYPE = "application/octet-stream"
INDEX_TYPE = "application/json"
LAYERS_META_TYPE = "application/json"
CONFIG_HASH_LABEL = "io.compose-spec.config-hash"
BUILD_KEY = "x-fioup-build"
BUILD_INPUTS = "images"
SAMPLE_PREFIX = "sample:"
REGISTRIES = ("hub", "third-party")  # where an image may be pushed (the recipe's `registry`)


def sample_path(name: str) -> Path:
    """The folder of a sample app shipped in the package, e.g. `shellhttpd/v1`."""
    path = Path(str(files("fioup_flow.factory") / "samples" / name))
    if not (path / "docker-compose.yml").is_file():
        raise UsageError(f"no sample app {name!r}")
    return path


def resolve_app_path(spec: str) -> Path:
    """`sample:<app>/<version>` or a folder path -> the app folder."""
    if spec.startswith(SAMPLE_PREFIX):
        return sample_path(spec[len(SAMPLE_PREFIX):])
    path = Path(spec)
    if not (path / "docker-compose.yml").is_file():
        raise UsageError(f"{spec}: no docker-compose.yml in this folder")
    return path


def default_hwid() -> str:
    return f"{host_arch()}-linux"


def _image_spec(app_dir: Path, name: str, recipe: dict, filler_mb: int, filler_seed: str) -> ImageSpec:
    return ImageSpec(
        name=name,
        files=app_dir / recipe["files"] if "files" in recipe else None,
        cmd=list(recipe.get("cmd", [])),
        entrypoint=list(recipe.get("entrypoint", [])),
        env={str(k): str(v) for k, v in recipe.get("env", {}).items()},
        expose=[int(p) for p in recipe.get("expose", [])],
        workdir=recipe.get("workdir", "/"),
        healthcheck=recipe.get("healthcheck"),
        filler_mb=filler_mb,
        filler_seed=filler_seed,
    )


def _push_image(pusher: RegistryPusher, repository: str, image: BuiltImage, tag: str) -> None:
    for blob in image.blobs:
        pusher.push_blob(repository, blob.path, blob.digest)
    pusher.push_manifest(repository, tag, image.manifest, json.loads(image.manifest)["mediaType"])


def _config_hash(service: dict) -> str:
    """sha256 of the pinned service's YAML, as composectl labels services for `ps`/status."""
    return hashlib.sha256(yaml.safe_dump(service, sort_keys=True).encode()).hexdigest()


def _pin_service(service: dict, image_ref: str) -> dict:
    pinned = {k: v for k, v in service.items() if k != BUILD_KEY}
    pinned["image"] = image_ref
    labels = pinned.get("labels") or {}
    if isinstance(labels, list):  # compose also allows ["key=value", "key"]
        labels = [item.partition("=")[::2] for item in labels]
    labels = dict(labels)
    labels.pop(CONFIG_HASH_LABEL, None)
    pinned["labels"] = labels  # hashed with the other labels, before the hash label is added
    labels[CONFIG_HASH_LABEL] = _config_hash(pinned)
    return pinned


def build_bundle(app_dir: Path, compose: bytes) -> tuple[bytes, dict[str, str]]:
    """Deterministic gzip tar of the app folder (minus build inputs) with `compose` as its
    docker-compose.yml; returns the tar and the bundle index `{path: "sha256:<hex>"}`."""
    contents = {"docker-compose.yml": compose}
    dirs = []
    for path in sorted(app_dir.rglob("*")):
        rel = path.relative_to(app_dir).as_posix()
        if rel == BUILD_INPUTS or rel.startswith(BUILD_INPUTS + "/") or rel == "docker-compose.yml":
            continue
        if path.is_dir():
            dirs.append(rel)
        elif path.is_file():
            contents[rel] = path.read_bytes()
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        for rel in dirs:
            tar.addfile(tar_entry(rel, tarfile.DIRTYPE, 0o755))
        for rel in sorted(contents):
            tar.addfile(tar_entry(rel, size=len(contents[rel])), io.BytesIO(contents[rel]))
    index = {rel: "sha256:" + hashlib.sha256(data).hexdigest() for rel, data in sorted(contents.items())}
    return raw.getvalue(), index


def _push_bytes(pusher: RegistryPusher, blobs: BlobDir, repository: str, data: bytes, media_type: str) -> dict:
    blob = blobs.add_bytes(data, media_type)
    pusher.push_blob(repository, blob.path, blob.digest)
    return blob.descriptor()


@dataclass(frozen=True)
class PinnedApp:
    """An app whose images are built and pushed: its compose file pinned, not yet a bundle."""

    compose: dict  # the compose file, every built service pinned to its pushed image
    layers_meta: dict[str, dict[str, int]]  # layer digest -> Layer.meta(), for composeapp's layers meta
    images: dict[str, BuiltImage]  # service -> the image built and pushed for it


def pin_app(pusher: RegistryPusher, blobs: BlobDir, app_dir: Path, version: int,
            filler_mb: int = 0, filler_seed: str = "") -> PinnedApp:
    """Build and push one app's service images; returns its compose file pinned to them.

    Filler layers (`filler_mb`) go into the image of the app's first service (by name), so the
    app as a whole grows by that much.
    """
    compose = yaml.safe_load((app_dir / "docker-compose.yml").read_text())
    services = compose.get("services") or {}
    layers_meta: dict[str, dict[str, int]] = {}
    images: dict[str, BuiltImage] = {}
    for index, service_name in enumerate(sorted(services)):
        service = services[service_name]
        recipe = service.get(BUILD_KEY)
        if recipe is None:
            if "@sha256:" not in service.get("image", ""):
                raise UsageError(f"{app_dir}: service {service_name} has neither {BUILD_KEY} nor a digest image")
            continue
        image_name = service["image"]
        spec = _image_spec(app_dir, image_name, recipe, filler_mb if index == 0 else 0, filler_seed)
        image = images[service_name] = build_image(spec, blobs)
        layers_meta.update(image.layers_meta)
        where = f"{app_dir}: service {service_name}"
        target, repository = _destination(pusher, recipe.get("registry", "hub"), image_name, where)
        _push_image(target, repository, image, str(version))
        services[service_name] = _pin_service(service, f"{target.host}/{repository}@{image.digest}")
    return PinnedApp(compose, layers_meta, images)


def _destination(pusher: RegistryPusher, registry: str, image_name: str, where: str) -> tuple[RegistryPusher, str]:
    """(pusher, repository) for an image: the hub, in the factory's namespace, or the third party."""
    if registry not in REGISTRIES:
        raise UsageError(f"{where}: registry must be one of {', '.join(REGISTRIES)}, not {registry!r}")
    if registry == "hub":
        return pusher, f"{pusher.home.load_state()['factory']}/{image_name}"
    return RegistryPusher(pusher.home, pusher.subject, third_party(pusher.home)), image_name


def compose_text(pinned: PinnedApp) -> bytes:
    """The pinned compose file as the bundle carries it."""
    return yaml.safe_dump(pinned.compose, sort_keys=False).encode()


def publish_app(pusher: RegistryPusher, blobs: BlobDir, name: str, app_dir: Path, version: int,
                filler_mb: int = 0, filler_seed: str = "") -> str:
    """Build and push one app's images and the app itself; returns the app's pinned URI."""
    pinned = pin_app(pusher, blobs, app_dir, version, filler_mb, filler_seed)
    return push_app(pusher, blobs, name, version, build_bundle(app_dir, compose_text(pinned)), pinned.layers_meta)


def push_app(pusher: RegistryPusher, blobs: BlobDir, name: str, version: int,
             bundle_and_index: tuple[bytes, dict[str, str]], layers_meta: dict[str, dict[str, int]]) -> str:
    """Push the bundle, its index, the layers meta and the app manifest (composeapp.md §1.2);
    returns the app's pinned URI.

    The app manifest's layers[1] is composeapp's "layers meta" (per layer: data size, disk
    usage once unpacked, blob size) for the images built here.
    """
    repository = f"{pusher.home.load_state()['factory']}/{name}"
    bundle, index = bundle_and_index
    index_bytes = json.dumps(index, indent=2, sort_keys=True).encode()
    index_desc = _push_bytes(pusher, blobs, repository, index_bytes, INDEX_TYPE)
    bundle_desc = _push_bytes(pusher, blobs, repository, bundle, BUNDLE_TYPE)
    bundle_desc["annotations"] = {"org.foundries.app.bundle.index.digest": index_desc["digest"],
                                  "org.foundries.app.bundle.index.size": str(index_desc["size"])}
    layers = [bundle_desc]
    if layers_meta:
        meta = {host_arch(): {"fs_block_size": FS_BLOCK_SIZE, "layers": dict(sorted(layers_meta.items()))}}
        meta_desc = _push_bytes(pusher, blobs, repository, json.dumps(meta).encode(), LAYERS_META_TYPE)
        layers.append({**meta_desc, "annotations": {"layers-meta": "v1"}})
    manifest = {
        "schemaVersion": 2,
        "mediaType": APP_MANIFEST_TYPE,
        "config": _push_bytes(pusher, blobs, repository, b"{}", EMPTY_CONFIG_TYPE),
        "layers": layers,
        "annotations": {"compose-app": "v1"},
        "artifactType": APP_ARTIFACT_TYPE,
    }
    digest = pusher.push_manifest(repository, str(version), json.dumps(manifest, indent=3).encode(),
                                  APP_MANIFEST_TYPE)
    return f"{pusher.host}/{repository}@{digest}"


def target_entries(factory: str, version: int, app_uris: dict[str, str], tags: list[str],
                   hwids: list[str]) -> dict[str, dict]:
    """One TUF target per hardware id, named `<hwid>-lmp-<version>` (fioup.md §4), shaped as a
    real factory's (fioctl `client/foundries.go`, TufCustom): length 0, the sha256 of the OSTree
    commit (here a stand-in: the sha256 of the custom data), and `custom`."""
    created = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    entries = {}
    for hwid in hwids:
        custom = {
            "version": str(version),
            "hardwareIds": [hwid],
            "tags": list(tags),
            "name": f"{hwid}-lmp",
            "targetFormat": "OSTREE",
            "arch": platform.machine(),
            "uri": f"https://ci.foundries.io/projects/{factory}/lmp/builds/{version}",
            "createdAt": created,
            "updatedAt": created,
            "docker_compose_apps": {app: {"uri": uri} for app, uri in sorted(app_uris.items())},
        }
        entries[f"{hwid}-lmp-{version}"] = {"length": 0, "hashes": {"sha256": hashlib.sha256(
            canonical_bytes(custom)).hexdigest()}, "custom": custom}
    return entries


@contextmanager
def publishing(home: FactoryHome) -> Iterator[tuple[RegistryPusher, BlobDir]]:
    """A pusher to the factory's registry and a scratch blob folder, for one publish."""
    if not home.state_file.exists() or not TufRepository(home).initialized():
        raise NotConfiguredError(f"no factory in {home.root}: run `fioup-flow-factory up --home {home.root}` first")
    with tempfile.TemporaryDirectory(prefix="publish-", dir=home.root) as work:
        yield RegistryPusher(home), BlobDir(Path(work))


def add_targets(home: FactoryHome, version: int, uris: dict[str, str], tags: list[str], hwids: list[str],
                production: bool = False) -> dict:
    """Add the Targets of `version` naming these app URIs, to production too with `production`;
    returns them (name -> TUF target file info)."""
    entries = target_entries(home.load_state()["factory"], version, uris, tags or ["main"], hwids or [default_hwid()])
    TufRepository(home).add_targets(entries, production)
    return entries


def publish_apps(home: FactoryHome, version: int, apps: dict[str, Path], tags: list[str],
                 hwids: list[str], layer_mb: dict[str, int] | int = 0, layer_seed: str = "",
                 production: bool = False) -> dict:
    """Publish `apps` (name -> folder) as version `version` and add their Targets.

    `layer_mb` adds that many MB of incompressible layers per app (an int for every app, or a
    map per app name); the bytes come from a PRNG seeded with image name and `layer_seed`, so
    they are shared across versions unless a different `layer_seed` is given.
    Returns the Targets added (name -> TUF target file info).
    """
    with publishing(home) as (pusher, blobs):
        uris = {}
        for name in sorted(apps):
            mb = layer_mb.get(name, 0) if isinstance(layer_mb, dict) else layer_mb
            uris[name] = publish_app(pusher, blobs, name, apps[name], version, mb, layer_seed)
    return add_targets(home, version, uris, tags, hwids, production)


def parse_app_specs(app_specs: tuple[str, ...]) -> dict[str, Path]:
    """`--app NAME=PATH` options -> {name: app folder}."""
    apps = {}
    for spec in app_specs:
        name, sep, path = spec.partition("=")
        if not sep or not name:
            raise UsageError(f"--app takes NAME=PATH, got {spec!r}")
        apps[name] = resolve_app_path(path)
    return apps


def _parse_layer_mb(values: tuple[str, ...]) -> dict[str, int] | int:
    """`--layer-mb 50` (every app) or `--layer-mb app=50` (repeatable)."""
    if len(values) == 1 and "=" not in values[0]:
        return int(values[0])
    try:
        return {app: int(mb) for app, mb in (value.split("=", 1) for value in values)}
    except ValueError as error:
        raise UsageError(f"--layer-mb takes MB or APP=MB: {error}") from error


@click.command("publish")
@click.option("--home", "home_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--version", required=True, type=int, help="Target version (custom.version).")
@click.option("--app", "app_specs", multiple=True, required=True, metavar="NAME=PATH",
              help="App folder, or sample:<app>/<version> for a sample shipped in the package.")
@click.option("--tag", "tags", multiple=True, help="Target tag (repeatable; default: main).")
@click.option("--hwid", "hwids", multiple=True, help="Hardware id (repeatable; default: <arch>-linux).")
@click.option("--layer-mb", "layer_mb", multiple=True, metavar="[APP=]MB",
              help="Add MB of incompressible layers to every app, or to APP.")
@click.option("--layer-seed", default="", help="Seed of the filler bytes (change it to make them differ).")
@click.option("--production", is_flag=True,
              help="Make the Targets production Targets too (what `fioctl waves init` then `waves complete` do).")
def publish_command(home_dir: Path, version: int, app_specs: tuple[str, ...], tags: tuple[str, ...],
                    hwids: tuple[str, ...], layer_mb: tuple[str, ...], layer_seed: str, production: bool) -> None:
    """Build the apps' images, push them and the apps to the registry, add the Targets (CI, and
    production with --production)."""
    added = publish_apps(FactoryHome(home_dir), version, parse_app_specs(app_specs), list(tags), list(hwids),
                         _parse_layer_mb(layer_mb), layer_seed, production)
    click.echo(json.dumps(added, indent=2, sort_keys=True))
