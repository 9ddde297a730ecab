"""An app tree is walked from the blob store: the compose file compose runs, in bounded memory.

These apps are put straight into a blob store (no registry): the walk reads only the store, as
it does on every resume and every `is_done`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fioup_flow.bundle import unpack
from fioup_flow.composeapp import (
    BUNDLE_TYPE,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    AppTreeLoader,
    read_compose,
)
from fioup_flow.errors import FetchError, InstallError
from fioup_flow.platforms import host_platform
from fioup_flow.store import BlobStore
from fioup_flow.targets import App

REPO = "registry.test:8443/factory"
MIB = 1024 * 1024


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put(store: BlobStore, data: bytes) -> str:
    digest = digest_of(data)
    store.put_bytes(digest, data)
    return digest


def put_file(store: BlobStore, path: Path) -> tuple[str, int]:
    """Commit a file into the store through its ordinary ingest, in chunks (bounded memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    digest, size = "sha256:" + h.hexdigest(), path.stat().st_size

    def chunks(offset: int) -> Iterator[bytes]:
        with open(path, "rb") as f:
            f.seek(offset)
            while chunk := f.read(MIB):
                yield chunk

    store.ingest(digest, size, chunks)
    return digest, size


def image_manifest(store: BlobStore, name: str) -> str:
    """A single-platform image manifest in the store (its config and layers are not needed to walk)."""
    doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
           "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                      "digest": digest_of(name.encode()), "size": len(name)},
           "layers": []}
    return put(store, json.dumps(doc).encode())


def compose_text(image_digest: str, image: str = "web") -> bytes:
    return yaml.safe_dump({"services": {"web": {"image": f"{REPO}/{image}@{image_digest}"}}}).encode()


def gzip_tar(*members: tuple[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def app_with_bundle(store: BlobStore, bundle_digest: str, bundle_size: int) -> App:
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(b"{}"),
                           "size": 2},
                "layers": [{"mediaType": BUNDLE_TYPE, "digest": bundle_digest, "size": bundle_size}]}
    return App("web", f"{REPO}/web@{put(store, json.dumps(manifest).encode())}")


# --- which entry is the compose file -----------------------------------------------------------

@pytest.mark.parametrize("name", ["docker-compose.yml", "./docker-compose.yml"])
def test_the_compose_file_is_the_entry_that_lands_at_the_project_root(name: str) -> None:
    compose = read_compose(io.BytesIO(gzip_tar((name, compose_text("sha256:" + "1" * 64)))), "web")
    assert compose["services"]["web"]["image"].endswith("1" * 64)


@pytest.mark.parametrize("name", [".docker-compose.yml", "../docker-compose.yml", "x/docker-compose.yml",
                                  "/docker-compose.yml", "docker-compose.yaml"])
def test_an_entry_that_lands_elsewhere_is_not_the_compose_file(name: str) -> None:
    decoy = compose_text("sha256:" + "d" * 64)
    with pytest.raises(InstallError, match="the bundle has no docker-compose.yml"):
        read_compose(io.BytesIO(gzip_tar((name, decoy))), "web")
    real = compose_text("sha256:" + "1" * 64)
    compose = read_compose(io.BytesIO(gzip_tar((name, decoy), ("docker-compose.yml", real))), "web")
    assert compose["services"]["web"]["image"].endswith("1" * 64), "the decoy before it is not read"


def test_two_entries_for_the_compose_file_are_refused_at_install_so_the_planned_one_is_the_one_run(
        tmp_path: Path) -> None:
    bundle = gzip_tar(("docker-compose.yml", compose_text("sha256:" + "1" * 64)),
                      ("./docker-compose.yml", compose_text("sha256:" + "2" * 64)))
    assert read_compose(io.BytesIO(bundle), "web")["services"]["web"]["image"].endswith("1" * 64)
    with pytest.raises(InstallError, match="names a path an earlier entry made"):
        unpack(io.BytesIO(bundle), tmp_path / "web", "web")


def test_a_compose_file_over_composeapps_cap_is_refused() -> None:
    big = compose_text("sha256:" + "1" * 64) + b"#" * (1024 * 1024)
    with pytest.raises(InstallError, match="larger than 1048576 bytes"):
        read_compose(io.BytesIO(gzip_tar(("docker-compose.yml", big))), "web")


# --- a big bundle, in bounded memory -----------------------------------------------------------

BIG_MB = 72  # past the old 64 MiB cap; mostly one incompressible file


@pytest.fixture
def big_app(tmp_path: Path) -> tuple[BlobStore, App, str]:
    """An app whose bundle is BIG_MB of random bytes with its compose file after them (read to the end)."""
    store = BlobStore(tmp_path / "store")
    image = image_manifest(store, "web")
    compose = compose_text(image)
    bundle_path = tmp_path / "bundle.tgz"
    with open(tmp_path / "big.bin", "wb") as f:
        for _ in range(BIG_MB):
            f.write(os.urandom(MIB))
    with tarfile.open(bundle_path, "w:gz", compresslevel=0) as tar:  # stored: random bytes do not shrink
        tar.add(tmp_path / "big.bin", "data/big.bin")
        info = tarfile.TarInfo("docker-compose.yml")
        info.size = len(compose)
        tar.addfile(info, io.BytesIO(compose))
    (tmp_path / "big.bin").unlink()
    digest, size = put_file(store, bundle_path)
    assert size > 64 * MIB
    return store, app_with_bundle(store, digest, size), image


def peak_memory(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_bundle_over_64_mib_is_walked_and_unpacked_in_bounded_memory(big_app, tmp_path: Path) -> None:
    store, app, image = big_app
    loader = AppTreeLoader(store, registry=None)
    trees = []
    walk_peak = peak_memory(lambda: trees.append(loader.load(app)))
    (tree,) = trees
    assert tree.services["web"].manifest.digest == image
    assert tree.bundle.size > 64 * MIB
    print(f"\nbundle {tree.bundle.size / MIB:.1f} MiB: walk peak {walk_peak / MIB:.2f} MiB", end="")
    assert walk_peak < 8 * MIB

    with store.open(tree.bundle.digest) as bundle:
        unpack_peak = peak_memory(lambda: unpack(bundle, tmp_path / "web", "web"))
    print(f", unpack peak {unpack_peak / MIB:.2f} MiB")
    assert unpack_peak < 8 * MIB
    assert (tmp_path / "web/data/big.bin").stat().st_size == BIG_MB * MIB


# --- which image of an index ------------------------------------------------------------------

def test_the_walk_takes_the_index_child_of_the_hosts_architecture_and_variant(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    children = {name: image_manifest(store, name) for name in ("v6", "v7", "arm64", "amd64")}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": children["v6"], "size": 1,
         "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
        {"mediaType": DOCKER_MANIFEST, "digest": children["v7"], "size": 1,
         "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {"mediaType": DOCKER_MANIFEST, "digest": children["arm64"], "size": 1,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"mediaType": DOCKER_MANIFEST, "digest": children["amd64"], "size": 1,
         "platform": {"os": "linux", "architecture": "amd64"}},
    ]}
    bundle = gzip_tar(("docker-compose.yml", compose_text(put(store, json.dumps(index).encode()))))
    app = app_with_bundle(store, put(store, bundle), len(bundle))
    picked = {machine: AppTreeLoader(store, None, host_platform(machine)).load(app).services["web"].manifest.digest
              for machine in ("armv6l", "armv7l", "aarch64", "x86_64")}
    assert picked == {"armv6l": children["v6"], "armv7l": children["v7"], "aarch64": children["arm64"],
                      "x86_64": children["amd64"]}
    with pytest.raises(FetchError, match="0 manifests for linux/riscv64, not one"):
        AppTreeLoader(store, None, host_platform("riscv64")).load(app)


# --- walking several apps at once -------------------------------------------------------------

class SlowCountingRegistry:
    """A fake registry (the walk's one network part; a real one cannot be made slow on demand) that
    serves another store's blobs, each after a pause, and counts what it was asked for."""

    def __init__(self, source: BlobStore):
        self.source = source
        self.asked: dict[str, int] = {}

    def _serve(self, digest: str) -> bytes:
        self.asked[digest] = self.asked.get(digest, 0) + 1
        time.sleep(0.05)
        return self.source.read(digest, 1 << 30)

    def manifest(self, ref, limit: int) -> tuple[bytes, str]:
        return self._serve(ref.digest), ""

    def open_blob(self, ref, offset: int = 0) -> Iterator[bytes]:
        return iter([self._serve(ref.digest)[offset:]])


def test_apps_walked_at_once_fetch_an_image_they_share_once_and_fail_as_in_turn(tmp_path: Path) -> None:
    source = BlobStore(tmp_path / "registry")
    shared = image_manifest(source, "shared")
    apps = []
    for name in ("one", "two"):
        bundle = gzip_tar(("docker-compose.yml", compose_text(shared, image=f"{name}-image")), (name, name.encode()))
        app = app_with_bundle(source, put(source, bundle), len(bundle))
        apps.append(App(name, app.uri.replace("/web@", f"/{name}@")))
    registry = SlowCountingRegistry(source)
    trees = AppTreeLoader(BlobStore(tmp_path / "device"), registry).load_all(apps)
    assert sorted(trees) == ["one", "two"]
    assert trees["one"].services["web"].manifest.digest == trees["two"].services["web"].manifest.digest == shared
    assert registry.asked[shared] == 1
    missing = [App("two", apps[1].uri.replace(apps[1].ref.digest, digest_of(b"gone"))),
               App("three", apps[0].uri.replace(apps[0].ref.digest, digest_of(b"lost")))]
    with pytest.raises(FetchError, match=digest_of(b"gone")):
        AppTreeLoader(BlobStore(tmp_path / "empty"), None).load_all(missing)
