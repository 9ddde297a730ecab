"""The device's registry client against real docker-registry instances: whose credentials go where.

The session's factory runs the hub (the device's `/hub-creds/` are good there) and a third
party's registry (anonymous pull; it knows no device, so credentials it does not know get a
401, as on Docker Hub). The client takes its credentials from a function, as the agent gives
it the gateway's answer; here the answer names one registry or the other.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import threading

import pytest
import yaml
from support import free_port, publish

from fioup_flow.config import Config
from fioup_flow.factory.registry import RegistryPusher, third_party
from fioup_flow.factory.token import ISSUER
from fioup_flow.gateway import GatewayClient
from fioup_flow.reference import PinnedRef
from fioup_flow.registry import HubCredentials, RegistryClient, RegistryError, origin

pytestmark = pytest.mark.factory


@pytest.fixture(scope="module")
def refs(factory) -> dict[str, PinnedRef]:
    """The `upstream` app on the hub, and its `clock` image on the third party (pinned by digest)."""
    targets = publish(factory.home.root, 1, {"upstream": "upstream/v1"}, "registry-client", "--hwid", "registry-client-linux")
    app = next(iter(targets.values()))["custom"]["docker_compose_apps"]["upstream"]["uri"]
    manifest = RegistryPusher(factory.home, site=third_party(factory.home)).get(
        "library/clock", "manifests", "1", "application/vnd.docker.distribution.manifest.v2+json").content
    clock = f"{factory.info['thirdparty']}/library/clock@sha256:{hashlib.sha256(manifest).hexdigest()}"
    return {"app": PinnedRef.parse(app), "clock": PinnedRef.parse(clock)}


@pytest.fixture
def answer(factory, make_device) -> dict:
    """A registered device's `/hub-creds/` answer: `{ServerURL, Username, Secret}`."""
    return GatewayClient(Config.load((str(make_device().cfg),))).get_json("hub-creds/")


def client(factory, answer: dict, calls: list | None = None) -> RegistryClient:
    def credentials() -> HubCredentials:
        if calls is not None:
            calls.append(answer)
        return HubCredentials.from_answer(answer)
    return RegistryClient(factory.home.ca_cert, credentials, retry_seconds=2)


def test_the_hub_s_credentials_open_the_hub_and_the_third_party_is_asked_anonymously(factory, refs, answer) -> None:
    registry = client(factory, answer)
    assert registry.manifest(refs["app"])[0]
    assert registry.manifest(refs["clock"])[0]  # the third party would refuse the device's credentials


def test_credentials_that_name_another_registry_are_not_sent_to_the_hub(factory, refs, answer) -> None:
    elsewhere = dict(answer, ServerURL=factory.info["thirdparty"])
    with pytest.raises(RegistryError, match="token service of .* refused the device: 401"):
        client(factory, elsewhere).manifest(refs["app"])  # the hub got an anonymous token request
    with pytest.raises(RegistryError, match="token service of .* refused the device: 401"):
        client(factory, elsewhere).manifest(refs["clock"])  # the third party got them, and knows them not


def test_a_blob_resumes_at_an_offset_across_the_redirect_to_the_storage(factory, refs, answer) -> None:
    registry = client(factory, answer)
    manifest = json.loads(registry.manifest(refs["clock"])[0])
    layer = refs["clock"].with_digest(manifest["layers"][0]["digest"])
    whole = b"".join(registry.open_blob(layer))
    assert "sha256:" + hashlib.sha256(whole).hexdigest() == layer.digest
    assert b"".join(registry.open_blob(layer, offset=10)) == whole[10:]


@pytest.mark.parametrize("server, host", [
    ("127.0.0.1:5000", "127.0.0.1:5000"),
    ("https://127.0.0.1:5000/", "127.0.0.1:5000"),
    ("https://Hub.Foundries.io", "hub.foundries.io"),
    ("hub.foundries.io:443", "hub.foundries.io"),
    ("docker.io", "registry-1.docker.io"),
])
def test_the_registry_credentials_belong_to_is_compared_as_a_host(server: str, host: str) -> None:
    assert origin(server) == host


class RealmProbe:
    """A plain TCP listener standing where an http realm points: it counts who connects."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


@pytest.fixture
def registry_with_an_http_realm(factory, tmp_path):
    """A real docker-registry whose token challenge names an http realm; (its host, the realm's probe)."""
    probe, port = RealmProbe(), free_port()
    home = factory.home
    config = {
        "version": 0.1, "log": {"level": "info"},
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "data")}},
        "http": {"addr": f"127.0.0.1:{port}", "tls": {"certificate": str(home.server_cert("thirdparty")),
                                                      "key": str(home.server_key("thirdparty"))}},
        "auth": {"token": {"realm": f"http://127.0.0.1:{probe.port}/token", "service": "plain",
                           "issuer": ISSUER, "rootcertbundle": str(home.ca_cert)}},
    }
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
    with open(tmp_path / "registry.log", "wb") as log:
        process = subprocess.Popen(["docker-registry", "serve", str(tmp_path / "config.yml")], stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                threading.Event().wait(0.05)
        yield f"127.0.0.1:{port}", probe
    finally:
        process.terminate()
        process.wait(10)
        probe.sock.close()


def test_a_token_realm_that_is_not_https_is_refused_before_anything_goes_there(
        factory, answer, registry_with_an_http_realm) -> None:
    host, probe = registry_with_an_http_realm
    calls: list = []
    ref = PinnedRef.parse(f"{host}/library/clock@sha256:{'ab' * 32}")
    with pytest.raises(RegistryError, match="token realm that is not https"):
        client(factory, dict(answer, ServerURL=host), calls).manifest(ref)
    assert probe.connections == 0 and calls == []
