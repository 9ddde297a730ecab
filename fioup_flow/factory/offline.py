"""`fioup-flow-factory offline-bundle`: an offline bundle of a version's Targets, for devices that
never see the network (what `fioctl targets offline-update <target> <dst> --tag T [--prod]` makes,
`subcommands/targets/offline-update.go`).

    <out>/tuf/   every N.root.json of the CI (or production) repository, the tag's timestamp,
                 snapshot and targets signed to expire with the bundle, and bundle-targets.json
                 signed by the Targets role's keys (see `TufRepository.offline_metadata`)
    <out>/apps/  a composeapp store of every app of those Targets, read from the factory's
                 registries as a device reads them: blobs/sha256/<hex>, and apps/<app>/<hex>/uri

The real factory's CI makes the apps part (`assemble-system-image` runs `composectl pull` into a
store and archives it; fioctl downloads and unpacks it), for the machine's platform: so here, for
this host's. fioctl writes roots from version 3 on (1 and 2 being in every image); this writes the
whole chain, which a device walks from its own newest root all the same. `--expires-in-days`
(default 30) is fioctl's. Apps are written first and `tuf/` last, so an interrupted run leaves no
folder a device takes for a bundle, and running it again goes on where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from fioup_flow.composeapp import AppTreeLoader
from fioup_flow.durable import write_atomic
from fioup_flow.errors import NotConfiguredError, UsageError
from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.registry import RegistryPusher, Site, hub, third_party
from fioup_flow.factory.tufrepo import CI, PRODUCTION, TufRepository, visible
from fioup_flow.reference import PinnedRef
from fioup_flow.registry import MANIFEST_TYPES, RegistryError
from fioup_flow.store import BlobStore, DigestMismatchError
from fioup_flow.targets import App

DEFAULT_TAG = "main"
DEFAULT_EXPIRES_DAYS = 30  # fioctl's --expires-in-days


class FactoryRegistries:
    """The factory's registries as a `BlobSource`, read with tokens the factory mints itself."""

    def __init__(self, home: FactoryHome):
        sites: list[Site] = [hub(home), third_party(home)]
        self.readers = {site.host(home): RegistryPusher(home, site=site) for site in sites}

    def _reader(self, ref: PinnedRef) -> RegistryPusher:
        if ref.host not in self.readers:
            raise UsageError(f"{ref} is in no registry of this factory")
        return self.readers[ref.host]

    def damaged(self, ref: PinnedRef, reason: str) -> DigestMismatchError:
        return DigestMismatchError(f"{reason}, read from https://{ref.host}/v2/{ref.repository}/blobs/{ref.digest}")

    def manifest(self, ref: PinnedRef, limit: int) -> tuple[bytes, str]:
        response = self._reader(ref).get(ref.repository, "manifests", ref.digest, MANIFEST_TYPES)
        data = response.content
        if len(data) > limit or "sha256:" + hashlib.sha256(data).hexdigest() != ref.digest:
            raise RegistryError(f"manifest {ref} is larger than {limit} bytes or does not match its digest")
        return data, response.headers.get("Content-Type", "")

    def open_blob(self, ref: PinnedRef, offset: int = 0) -> Iterator[bytes]:
        if offset:
            raise ValueError("an offline bundle's blobs are read whole")
        with self._reader(ref).get(ref.repository, "blobs", ref.digest, stream=True) as response:
            yield from response.iter_content(chunk_size=1024 * 1024)


def bundle_targets(repo: TufRepository, version: int, tag: str, production: bool) -> dict[str, dict]:
    """The Targets of `version` that the view of `tag` lists (every hardware id)."""
    chosen = {name: info for name, info in repo.targets(production).items()
              if info.get("custom", {}).get("version") == str(version) and visible(info, {tag})}
    if not chosen:
        kind = "production " if production else ""
        raise UsageError(f"no {kind}Target of version {version} with tag {tag!r}")
    return chosen


def write_apps(home: FactoryHome, uris: set[str], apps_dir: Path) -> int:
    """Every blob of the apps `uris` name into the store `apps_dir`, verified, and each app's `uri`
    file; returns the number of blobs."""
    store = BlobStore(apps_dir)
    store.discard_partials()  # a run cut short starts its blobs over: the registries are read whole
    registries = FactoryRegistries(home)
    loader = AppTreeLoader(store, registries)
    digests = set()
    for uri in sorted(uris):
        app = App(PinnedRef.parse(uri).name, uri)
        tree = loader.load(app)
        for blob in tree.blobs():
            store.ingest(blob.digest, blob.size, lambda offset, ref=blob.ref: registries.open_blob(ref, offset))
            digests.add(blob.digest)
        write_atomic(apps_dir / "apps" / app.name / app.ref.digest.split(":", 1)[1] / "uri", uri.encode(),
                     mode=0o644)
    shutil.rmtree(store.ingest_root, ignore_errors=True)
    return len(digests)


def write_bundle(home: FactoryHome, version: int, tag: str, production: bool, out: Path,
                 expires: datetime) -> dict:
    """Write the offline bundle of `version` for `tag` into `out`; what it holds."""
    repo = TufRepository(home)
    if not home.state_file.exists() or not repo.initialized():
        raise NotConfiguredError(f"no factory in {home.root}: run `fioup-flow-factory up --home {home.root}` first")
    if (out / "tuf").exists():
        raise UsageError(f"{out} holds an offline bundle already: give an empty folder")
    targets = bundle_targets(repo, version, tag, production)
    uris = {app["uri"] for info in targets.values()
            for app in (info["custom"].get("docker_compose_apps") or {}).values()}
    blobs = write_apps(home, uris, out / "apps")
    kind = PRODUCTION if production else CI
    for name, data in repo.offline_metadata(kind, tag, sorted(targets), expires).items():
        write_atomic(out / "tuf" / name, data, mode=0o644)
    return {"out": str(out), "type": kind, "tag": tag, "targets": sorted(targets), "apps": sorted(uris),
            "blobs": blobs, "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}


@click.command("offline-bundle")
@click.option("--home", "home_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--version", required=True, type=int, help="The Targets of this version.")
@click.option("--tag", default=DEFAULT_TAG, show_default=True, help="The tag whose Targets and metadata it carries.")
@click.option("--production", is_flag=True, help="A bundle of production Targets, for production devices.")
@click.option("--expires-in-days", type=int, default=DEFAULT_EXPIRES_DAYS, show_default=True,
              help="How long the bundle and its metadata stay valid (negative: already expired).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The folder to write it into (a USB stick's, say).")
def offline_bundle_command(home_dir: Path, version: int, tag: str, production: bool, expires_in_days: int,
                           out: Path) -> None:
    """Write an offline bundle of version N's Targets (tuf/ and apps/), signed with the factory's keys."""
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=expires_in_days)
    click.echo(json.dumps(write_bundle(FactoryHome(home_dir.resolve()), version, tag, production, out, expires),
                          indent=2))
