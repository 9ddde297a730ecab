"""Images built by the factory: deterministic, correctly described, and really runnable."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from fioup_flow.factory.images import (APPLETS, CONFIG_TYPE, LAYER_TYPE, MANIFEST_TYPE, BlobDir, ImageSpec,
                                       build_image, docker_save_tar)

_MIB = 1024 * 1024


def _web_spec(files: Path, **overrides) -> ImageSpec:
    fields = dict(name="web", files=files, cmd=["httpd", "-f", "-p", "80", "-h", "/www"], expose=[80],
                  env={"GREETING": "hello"},
                  healthcheck={"test": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/"],
                               "interval": "2s", "retries": 3})
    return ImageSpec(**{**fields, **overrides})


@pytest.fixture
def web_files(tmp_path: Path) -> Path:
    root = tmp_path / "files"
    (root / "www").mkdir(parents=True)
    (root / "www" / "index.html").write_text("hello from a locally built image\n")
    return root


def test_building_the_same_image_twice_gives_the_same_digests(tmp_path, web_files):
    first = build_image(_web_spec(web_files, filler_mb=1), BlobDir(tmp_path / "a"))
    second = build_image(_web_spec(web_files, filler_mb=1), BlobDir(tmp_path / "b"))
    assert first.digest == second.digest
    assert [b.digest for b in first.blobs] == [b.digest for b in second.blobs]


def test_a_changed_file_or_filler_seed_changes_only_the_layers_it_touches(tmp_path, web_files):
    blobs = BlobDir(tmp_path / "blobs")
    base = build_image(_web_spec(web_files, filler_mb=1), blobs)
    reseeded = build_image(_web_spec(web_files, filler_mb=1, filler_seed="other"), blobs)
    (web_files / "www" / "index.html").write_text("changed\n")
    edited = build_image(_web_spec(web_files, filler_mb=1), blobs)

    assert len({base.digest, reseeded.digest, edited.digest}) == 3
    busybox, files, filler = base.layers
    assert reseeded.layers[:2] == [busybox, files] and reseeded.layers[2] != filler
    assert edited.layers[0] == busybox and edited.layers[1] != files and edited.layers[2] == filler


def test_the_manifest_describes_the_config_and_gzip_layers_by_digest_and_size(tmp_path, web_files):
    image = build_image(_web_spec(web_files), BlobDir(tmp_path))
    manifest = json.loads(image.manifest)
    assert manifest["mediaType"] == MANIFEST_TYPE and manifest["schemaVersion"] == 2
    assert manifest["config"]["mediaType"] == CONFIG_TYPE
    for descriptor, blob in zip([manifest["config"], *manifest["layers"]], image.blobs, strict=True):
        data = blob.path.read_bytes()
        assert descriptor["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
        assert descriptor["size"] == len(data)
    assert {layer["mediaType"] for layer in manifest["layers"]} == {LAYER_TYPE}


def test_the_config_diff_ids_are_the_digests_of_the_uncompressed_layers(tmp_path, web_files):
    image = build_image(_web_spec(web_files), BlobDir(tmp_path))
    config = json.loads(image.config.path.read_bytes())
    uncompressed = ["sha256:" + hashlib.sha256(gzip.decompress(layer.path.read_bytes())).hexdigest()
                    for layer in image.layers]
    assert config["rootfs"] == {"type": "layers", "diff_ids": uncompressed}
    run = config["config"]
    assert run["Cmd"] == ["httpd", "-f", "-p", "80", "-h", "/www"]
    assert run["ExposedPorts"] == {"80/tcp": {}}
    assert "GREETING=hello" in run["Env"]
    assert run["Healthcheck"]["Interval"] == 2_000_000_000 and run["Healthcheck"]["Retries"] == 3


def test_filler_layers_add_the_requested_megabytes_without_compressing_away(tmp_path, web_files):
    image = build_image(_web_spec(web_files, filler_mb=70), BlobDir(tmp_path))
    filler = image.layers[2:]
    assert len(filler) == 2, "70 MB is split into layers of at most 64 MB"
    assert sum(layer.size for layer in filler) > 70 * _MIB


def _docker_client():
    if not os.environ.get("DOCKER_HOST"):
        pytest.skip("needs a Docker engine: DOCKER_HOST is unset (scripts/test starts a private dockerd)")
    import docker

    return docker.from_env()


@pytest.mark.docker
def test_an_image_built_here_loads_into_dockerd_from_its_gzip_blobs_and_runs(tmp_path, web_files):
    client = _docker_client()
    image = build_image(_web_spec(web_files, filler_mb=1), BlobDir(tmp_path))
    tar = io.BytesIO()
    docker_save_tar(image, "fioup-flow-test/web:registry-images", tar)
    client.images.load(tar.getvalue())
    try:
        loaded = client.images.get("fioup-flow-test/web:registry-images")
        assert loaded.id == image.config.digest, "the engine's image id is the config digest"
        script = "httpd -p 8000 -h /www && wget -q -O - http://127.0.0.1:8000/ && echo $GREETING && ls /bin"
        output = client.containers.run(loaded.id, ["sh", "-c", script], remove=True).decode()
        assert "hello from a locally built image" in output
        assert "hello\n" in output
        assert set(APPLETS) <= set(output.split())
    finally:
        client.images.remove("fioup-flow-test/web:registry-images", force=True)
