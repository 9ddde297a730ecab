"""The second registry, standing for a third party's (Docker Hub, say): a real docker-registry
whose token service lets anyone pull and only the publisher push, knows no device, refuses the
hub's tokens, and sends blob GETs to the blob storage."""

from __future__ import annotations

import jwt
import pytest
import requests
from cryptography import x509
from support import publish

from fioup_flow.factory.devices import DeviceRecords
from fioup_flow.factory.token import SERVICE, THIRDPARTY_SERVICE

pytestmark = pytest.mark.factory

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
SCOPE = "repository:library/clock:pull,push"


def token(factory, service: str, scope: str = SCOPE, auth=None) -> requests.Response:
    return requests.get(f"{factory.api}/token", params={"service": service, "scope": scope}, auth=auth,
                        verify=factory.info["ca"], timeout=30)


def access(factory, response: requests.Response, service: str = THIRDPARTY_SERVICE) -> list[str]:
    assert response.status_code == 200, response.text
    signer = x509.load_pem_x509_certificate(factory.home.token_signer_cert.read_bytes())
    claims = jwt.decode(response.json()["token"], signer.public_key(), algorithms=["ES256"], audience=service)
    return claims["access"][0]["actions"]


def clock_manifest(factory, bearer: str) -> requests.Response:
    return requests.get(f"https://{factory.info['thirdparty']}/v2/library/clock/manifests/1",
                        headers={"Authorization": f"Bearer {bearer}", "Accept": MANIFEST},
                        verify=factory.info["public_ca"], timeout=30, allow_redirects=False)


@pytest.fixture(scope="module")
def published(factory) -> None:
    publish(factory.home.root, 1, {"upstream": "upstream/v1"}, "third-party-registry", "--hwid", "third-party-linux")


def test_anyone_pulls_anonymously_and_only_the_publisher_pushes(factory) -> None:
    publisher = factory.home.load_state()["publisher"]
    assert access(factory, token(factory, THIRDPARTY_SERVICE)) == ["pull"]
    assert access(factory, token(factory, THIRDPARTY_SERVICE, auth=(publisher["username"], publisher["secret"]))) \
        == ["pull", "push"]


def test_the_third_party_knows_no_device(factory, make_device) -> None:
    device = make_device()
    record = DeviceRecords(factory.home).find(device.name)
    assert token(factory, THIRDPARTY_SERVICE, auth=(record["uuid"], record["registry_secret"])).status_code == 401
    assert token(factory, SERVICE, f"repository:{factory.info['factory']}/x:pull",
                 auth=(record["uuid"], record["registry_secret"])).status_code == 200


def test_an_anonymous_token_reads_the_third_party_and_a_hub_token_does_not(factory, published) -> None:
    anonymous = token(factory, THIRDPARTY_SERVICE).json()["token"]
    assert clock_manifest(factory, anonymous).status_code == 200
    publisher = factory.home.load_state()["publisher"]
    hub = token(factory, SERVICE, SCOPE, auth=(publisher["username"], publisher["secret"])).json()["token"]
    assert clock_manifest(factory, hub).status_code == 401


def test_blob_gets_are_redirected_to_the_storage(factory, published) -> None:
    anonymous = token(factory, THIRDPARTY_SERVICE).json()["token"]
    layer = clock_manifest(factory, anonymous).json()["layers"][0]["digest"]
    response = requests.get(f"https://{factory.info['thirdparty']}/v2/library/clock/blobs/{layer}",
                            headers={"Authorization": f"Bearer {anonymous}"}, verify=factory.info["public_ca"],
                            timeout=30, allow_redirects=False)
    hex_ = layer.split(":")[1]
    assert response.status_code == 307
    assert response.headers["Location"] == \
        f"{factory.info['storage']}/docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data"
