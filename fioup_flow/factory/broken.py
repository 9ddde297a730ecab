"""`fioup-flow-factory publish-broken`: publish a Target with one app broken on purpose.

A real factory can serve a device bad input: storage that rots, a hostile or buggy publisher.
The device must refuse such an app without harming what runs. These publishers make each kind
of bad input through the normal publish path, changed at one point only:

* `digest`: the app's images get one extra layer of fresh random bytes, published correctly;
  then that layer's data file in the registry's storage is overwritten with other bytes of the
  same size. The registry serves them as they are, so the device sees a digest mismatch while
  fetching (the layer is new, so no good Target shares the rotten blob).
* `path-escape`: the bundle carries one more entry, `../escape`, after the app's files; the
  bundle index lists only the app's files. The device finds it when it unpacks the bundle.
* `symlink-chain`: the bundle carries, after the app's files, links that each look harmless
  alone (`a -> .`, `a/b -> ..`, `a/b/c -> ..`) and then a file `a/b/c/escape`, which an
  unpacker that writes through the links it made puts beside the project folders.
* `bad-compose`: the images are built and pinned, but the bundle's `docker-compose.yml` is no
  longer YAML. The device finds it when it reads the compose file to walk the app.
"""

from __future__ import annotations

import gzip
import io
import json
import secrets
import tarfile
from collections.abc import Callable
from pathlib import Path

import click

from fioup_flow.durable import write_atomic
from fioup_flow.errors import UsageError
from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.images import BlobDir, tar_entry
from fioup_flow.factory.publish import (
    add_targets,
    build_bundle,
    compose_text,
    parse_app_specs,
    pin_app,
    publish_app,
    publishing,
    push_app,
)
from fioup_flow.factory.registry import RegistryPusher

ESCAPE_NAME = "escape"
ESCAPE_ENTRY = f"../{ESCAPE_NAME}"
# Unpacked in `<compose-apps>/.staging/<app>`, these climb to `<compose-apps>` through links only.
LINK_CHAIN = (("a", "."), ("a/b", ".."), ("a/b/c", ".."))
ESCAPE_DATA = b"written outside the project\n"
ROTTEN_LAYER_MB = 1
# Appended to a valid compose file: an unclosed flow sequence, which no YAML parser accepts.
BAD_YAML = b"\nx-broken: [unclosed, {\n"

Breaker = Callable[[RegistryPusher, BlobDir, str, Path, int], str]


def registry_blob_data(home: FactoryHome, digest: str) -> Path:
    """The file docker-registry's filesystem storage keeps a blob's bytes in."""
    hex_digest = digest.split(":", 1)[1]
    return home.registry_data / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"


def _rot(path: Path) -> None:
    """Replace a file's bytes with as many different ones (every byte inverted)."""
    data = path.read_bytes()
    write_atomic(path, bytes(b ^ 0xFF for b in data), mode=0o644)


def publish_rotten_layer(pusher: RegistryPusher, blobs: BlobDir, name: str, app_dir: Path, version: int) -> str:
    """The app with a fresh filler layer whose bytes in the registry no longer match its digest."""
    pinned = pin_app(pusher, blobs, app_dir, version, ROTTEN_LAYER_MB, f"rotten-{secrets.token_hex(8)}")
    if not pinned.images:
        raise UsageError(f"app {name}: no service image is built here, so there is no layer of its own to rot")
    first_service = min(pinned.images)
    filler = pinned.images[first_service].layers[-1]  # the filler layers come last
    uri = push_app(pusher, blobs, name, version, build_bundle(app_dir, compose_text(pinned)), pinned.layers_meta)
    _rot(registry_blob_data(pusher.home, filler.digest))
    return uri


def with_entries(bundle: bytes, extra: list[tarfile.TarInfo], data: bytes) -> bytes:
    """The gzip tar `bundle` with the entries `extra` at its end, each regular file holding `data`.

    Nothing is checked: the point is to write what a device must refuse.
    """
    out = io.BytesIO()
    with (tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as src,
          gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz,
          tarfile.open(fileobj=gz, mode="w|") as dst):
        for member in src:
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        for member in extra:
            dst.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return out.getvalue()


def _publish_with_entries(pusher: RegistryPusher, blobs: BlobDir, name: str, app_dir: Path, version: int,
                          extra: list[tarfile.TarInfo]) -> str:
    """The app whose bundle also holds `extra`; its index matches the app's own files."""
    pinned = pin_app(pusher, blobs, app_dir, version)
    bundle, index = build_bundle(app_dir, compose_text(pinned))
    escaping = with_entries(bundle, extra, ESCAPE_DATA)
    return push_app(pusher, blobs, name, version, (escaping, index), pinned.layers_meta)


def publish_path_escape(pusher: RegistryPusher, blobs: BlobDir, name: str, app_dir: Path, version: int) -> str:
    """The app whose bundle also holds `../escape`."""
    extra = [tar_entry(ESCAPE_ENTRY, size=len(ESCAPE_DATA))]
    return _publish_with_entries(pusher, blobs, name, app_dir, version, extra)


def publish_symlink_chain(pusher: RegistryPusher, blobs: BlobDir, name: str, app_dir: Path, version: int) -> str:
    """The app whose bundle also holds a chain of links and a file written through them."""
    links = [tar_entry(link, tarfile.SYMTYPE, 0o777, linkname=target) for link, target in LINK_CHAIN]
    through = f"{LINK_CHAIN[-1][0]}/{ESCAPE_NAME}"  # a/b/c/escape
    extra = links + [tar_entry(through, size=len(ESCAPE_DATA))]
    return _publish_with_entries(pusher, blobs, name, app_dir, version, extra)


def publish_bad_compose(pusher: RegistryPusher, blobs: BlobDir, name: str, app_dir: Path, version: int) -> str:
    """The app with its images pinned but a compose file that does not parse (index matching it)."""
    pinned = pin_app(pusher, blobs, app_dir, version)
    bundle = build_bundle(app_dir, compose_text(pinned) + BAD_YAML)
    return push_app(pusher, blobs, name, version, bundle, pinned.layers_meta)


BREAKERS: dict[str, Breaker] = {
    "digest": publish_rotten_layer,
    "path-escape": publish_path_escape,
    "symlink-chain": publish_symlink_chain,
    "bad-compose": publish_bad_compose,
}


def publish_broken(home: FactoryHome, version: int, apps: dict[str, Path], broken: str, kind: str,
                   tags: list[str], hwids: list[str]) -> dict:
    """Publish `apps` as Target `version`, the app `broken` broken the `kind` way; the Targets added."""
    if broken not in apps:
        raise UsageError(f"the app to break, {broken!r}, is not one of the apps ({', '.join(sorted(apps))})")
    if kind not in BREAKERS:
        raise UsageError(f"no way to break an app called {kind!r} (known: {', '.join(sorted(BREAKERS))})")
    with publishing(home) as (pusher, blobs):
        uris = {name: publish_app(pusher, blobs, name, path, version)
                for name, path in sorted(apps.items()) if name != broken}
        uris[broken] = BREAKERS[kind](pusher, blobs, broken, apps[broken], version)
    return add_targets(home, version, uris, tags, hwids)


@click.command("publish-broken")
@click.option("--home", "home_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--version", required=True, type=int, help="Target version (custom.version).")
@click.option("--kind", required=True, type=click.Choice(sorted(BREAKERS)), help="How the app is broken.")
@click.option("--app", "app_specs", multiple=True, required=True, metavar="NAME=PATH",
              help="App folder, or sample:<app>/<version>; the first one is broken unless --break says.")
@click.option("--break", "broken", default=None, metavar="NAME", help="The app to break (default: the first --app).")
@click.option("--tag", "tags", multiple=True, help="Target tag (repeatable; default: main).")
@click.option("--hwid", "hwids", multiple=True, help="Hardware id (repeatable; default: <arch>-linux).")
def publish_broken_command(home_dir: Path, version: int, kind: str, app_specs: tuple[str, ...], broken: str | None,
                           tags: tuple[str, ...], hwids: tuple[str, ...]) -> None:
    """Publish a Target with one app broken on purpose, to test that devices refuse it."""
    apps = parse_app_specs(app_specs)
    broken = broken or app_specs[0].partition("=")[0]
    added = publish_broken(FactoryHome(home_dir), version, apps, broken, kind, list(tags), list(hwids))
    click.echo(json.dumps(added, indent=2, sort_keys=True))
