"""A device meets registries as on the real service: the factory's hub, a third party's, blob storage.

The session's factory runs two registries whose certificates come from a CA standing for the
Web PKI (the device trusts it through `SSL_CERT_FILE`, its "system store"): the hub, where the
device's `/hub-creds/` are good, and a third party's, anonymous-pull like Docker Hub, which
redirects blob GETs to the factory's blob storage. The sample app `upstream` has one image on
each. Everything is judged from the servers' own logs and the engine.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
import requests
from core_factory import start_factory, stop_factory
from support import clean_engine, new_device, publish

from fioup_flow.factory.devices import DeviceRecords
from fioup_flow.factory.storage import storage_requests

pytestmark = [pytest.mark.factory, pytest.mark.docker]

_REQUEST = re.compile(r'msg="response completed.*?http\.request\.method=(\w+) .*?http\.request\.uri="?([^" ]+)"? '
                      r'.*?http\.response\.status=(\d+)')
_TOKEN = re.compile(r"token for (\S+): service=(\S+) scope=(\S*)")


def registry_requests(home, service: str) -> list[tuple[str, str, int]]:
    """(method, uri, status) of every request a registry answered, from its own log."""
    text = home.log_file(service).read_text(errors="replace")
    return [(m[1], m[2], int(m[3])) for m in _REQUEST.finditer(text)]


def token_requests(home) -> list[tuple[str, str, str]]:
    """(subject, service, scope) of every token the factory's token endpoint gave, from its log."""
    text = home.log_file("factory-server").read_text(errors="replace")
    return [(m[1], m[2], m[3]) for m in _TOKEN.finditer(text)]


def running_images(engine) -> dict[str, str]:
    """service -> image tag of the running containers of the `upstream` app."""
    return {c.labels["com.docker.compose.service"]: c.image.tags[0] for c in engine.containers.list()
            if c.labels.get("com.docker.compose.project") == "upstream"}


@pytest.fixture
def tag() -> str:
    return f"r{uuid.uuid4().hex[:8]}"


def hwid(tag: str) -> str:
    return f"{tag}-linux"


@pytest.fixture
def upstream(factory, engine, tag):
    """The `upstream` app published as version 1 under this test's tag and hardware id (a Target of
    its own: the session's releases keep theirs); the engine emptied around it."""
    clean_engine(engine)
    publish(factory.home.root, 1, {"upstream": "upstream/v1"}, tag, "--hwid", hwid(tag))
    yield
    clean_engine(engine)


def test_an_image_of_a_third_party_comes_anonymously_and_its_blobs_from_the_storage_without_credentials(
        factory, engine, upstream, tag, tmp_path) -> None:
    home, info = factory.home, factory.info
    storage_before = len(storage_requests(home))
    tokens_before = len(token_requests(home))
    device = new_device(info, tmp_path / "sota", "--tag", tag, "--hwid", hwid(tag))
    done = device.run("apply", "1")
    assert done.returncode == 0, done.stderr

    images = running_images(engine)
    assert images["clock"].startswith(f"{info['thirdparty']}/library/clock:")
    assert images["relay"].startswith(f"{info['registry']}/{info['factory']}/relay:")
    # The third party answered every blob GET with a redirect to the storage...
    blob_gets = [(uri, status) for method, uri, status in registry_requests(home, "thirdparty")
                 if method == "GET" and "/v2/library/clock/blobs/" in uri]
    assert blob_gets and {status for _, status in blob_gets} == {307}
    # ...where each arrived, and none carried an Authorization header (the storage's own log).
    fetched = storage_requests(home)[storage_before:]
    assert {r["path"].split("/")[-2] for r in fetched} == {uri.rsplit(":", 1)[1] for uri, _ in blob_gets}
    assert [r for r in fetched if r["authorization"] or r["status"] != 200] == []
    # The device's credentials went to the hub's token service only; the third party's was asked anonymously.
    uuid_ = DeviceRecords(home).find(device.name)["uuid"]
    subjects = {(subject, service) for subject, service, _ in token_requests(home)[tokens_before:]}
    assert subjects == {(uuid_, "fioup-flow-registry"), ("anonymous", "fioup-flow-thirdparty")}


def test_without_the_public_ca_in_the_system_store_the_registry_is_not_trusted(
        factory, engine, upstream, tag, tmp_path) -> None:
    """The factory's root.crt no longer vouches for the registry, and requests' own ways to
    name CAs (certifi, $REQUESTS_CA_BUNDLE) are not the system's store."""
    device = new_device(factory.info, tmp_path / "sota", "--tag", tag, "--hwid", hwid(tag))
    empty = tmp_path / "empty-store"
    empty.mkdir()
    for env in ({"SSL_CERT_FILE": str(factory.home.ca_cert), "SSL_CERT_DIR": str(empty)},
                {"SSL_CERT_FILE": str(empty / "none.crt"), "SSL_CERT_DIR": str(empty),
                 "REQUESTS_CA_BUNDLE": factory.info["ca_bundle"]}):
        done = device.run("apply", "1", env=env)
        assert done.returncode == 40, done.stderr
        assert "TLS failed" in done.stderr and "certificate verify failed" in done.stderr
    assert running_images(engine) == {}
    assert device.run("apply", "1").returncode == 0  # the same device, with the public CA in its store


def test_a_hub_that_redirects_blobs_to_storage_never_sees_its_token_go_there(engine, tmp_path) -> None:
    """The real hub redirects blob GETs to cloud storage: the device's bearer token stays behind."""
    own = start_factory(tmp_path / "home", "--hub-blob-redirect")
    clean_engine(engine)
    try:
        publish(own.home.root, 1, {"upstream": "upstream/v1"}, "main")
        device = new_device(own.info, tmp_path / "sota")
        trust = {"SSL_CERT_FILE": own.info["ca_bundle"]}
        done = device.run("apply", "1", env=trust)
        assert done.returncode == 0, done.stderr
        assert set(running_images(engine)) == {"clock", "relay"}
        hub_blob_gets = [(uri, status) for method, uri, status in registry_requests(own.home, "registry")
                         if method == "GET" and "/blobs/" in uri]
        assert hub_blob_gets and {status for _, status in hub_blob_gets} == {307}
        fetched = storage_requests(own.home)
        assert {r["path"].split("/")[-2] for r in fetched} >= {uri.rsplit(":", 1)[1] for uri, _ in hub_blob_gets}
        assert [r for r in fetched if r["authorization"] or r["status"] != 200] == []
    finally:
        clean_engine(engine)
        stop_factory(own)


def test_the_storage_refuses_a_request_that_carries_credentials(factory, releases) -> None:
    """As S3 and GCS refuse a signed URL with an Authorization header: a leak would fail, and show."""
    blob = next(factory.home.registry_data.glob("docker/registry/v2/blobs/sha256/*/*/data"))
    path = "/" + blob.relative_to(factory.home.registry_data).as_posix()
    url = f"{factory.info['storage']}{path}"
    assert requests.get(url, verify=factory.info["public_ca"], timeout=10).content == blob.read_bytes()
    part = requests.get(url, headers={"Range": "bytes=3-"}, verify=factory.info["public_ca"], timeout=10)
    assert part.status_code == 206 and part.content == blob.read_bytes()[3:]
    leaked = requests.get(url, headers={"Authorization": "Bearer x"}, verify=factory.info["public_ca"], timeout=10)
    assert leaked.status_code == 400
    assert json.loads(factory.home.log_file("storage").read_text().splitlines()[-1])["authorization"] is True
