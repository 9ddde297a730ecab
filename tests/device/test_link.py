"""A device registers with its factory and learns, securely, which Targets exist for it.

Runs against the session's real local factory (gateway over mutual TLS, TUF-signed metadata,
registry with token auth) through the real `fioup-flow` command.
"""

from __future__ import annotations

import json
import uuid

import pytest
import requests
from support import register

from fioup_flow.config import Config
from fioup_flow.factory.tufrepo import CI, TufRepository
from fioup_flow.gateway import GatewayClient

pytestmark = pytest.mark.factory

DIGEST = "sha256:" + "ab" * 32


def add_target(factory, version: int, tag: str, hwid: str = "amd64-linux", apps: dict | None = None) -> str:
    """Add a Target straight into the factory's TUF repository (publish is tested elsewhere)."""
    name = f"{hwid}-lmp-{version}-{tag}"
    registry = factory.info["registry"]
    custom = {"version": str(version), "hardwareIds": [hwid], "tags": [tag], "name": f"{hwid}-lmp",
              "docker_compose_apps": apps or {"web": {"uri": f"{registry}/factory/web@{DIGEST}"}}}
    TufRepository(factory.home).add_targets({name: {"length": 0, "hashes": {"sha256": "00" * 32}, "custom": custom}})
    return name


@pytest.fixture
def tag() -> str:
    """A tag of this test's own, so the Targets it sees are exactly those it added."""
    return f"t{uuid.uuid4().hex[:8]}"


def test_check_lists_exactly_the_targets_for_this_hardware_id_and_tag(factory, make_device, tag) -> None:
    add_target(factory, 1, tag)
    add_target(factory, 2, tag)
    add_target(factory, 3, tag, hwid="arm64-linux")
    add_target(factory, 4, "othertag")
    device = make_device("--tag", tag, "--hwid", "amd64-linux")
    report = device.json("check", "--json")
    assert [t["version"] for t in report["targets"]] == [1, 2]
    assert report["latest"]["version"] == 2 and report["current"] is None and report["update_available"]
    assert report["targets"][0]["apps"][0]["name"] == "web"


def test_registering_twice_without_force_fails_cleanly_and_keeps_the_first(factory, make_device, tag) -> None:
    device = make_device("--tag", tag)
    before = device.cfg.read_bytes()
    again = register(factory.info, device.sota_dir)
    assert again.returncode == 6 and "--force" in again.stderr
    assert device.cfg.read_bytes() == before
    forced = register(factory.info, device.sota_dir, None, "--force", "--tag", tag)
    assert forced.returncode == 0, forced.stderr


def test_registration_writes_the_key_private_and_proves_the_link(factory, make_device, tag) -> None:
    device = make_device("--tag", tag)
    assert (device.sota_dir / "pkey.pem").stat().st_mode & 0o777 == 0o600
    for name in ("client.pem", "root.crt"):
        assert (device.sota_dir / name).is_file()
    assert not (device.sota_dir / "tuf").exists(), "the first TUF root comes with the OS image, not registration"
    whoami = device.json("whoami", "--json")
    assert whoami["name"] == device.name


def test_a_wrong_registration_token_is_refused(factory, tmp_path) -> None:
    done = register(dict(factory.info, registration_token="wrong"), tmp_path / "d")
    assert done.returncode == 6 and "401" in done.stderr
    assert not (tmp_path / "d" / "sota.toml").exists()


def test_check_starts_from_the_roots_the_image_ships_and_says_what_it_trusts(factory, make_device, tag) -> None:
    add_target(factory, 1, tag)
    device = make_device("--tag", tag)
    done = device.run("check")
    assert done.returncode == 0, done.stderr
    assert "TUF (signatures, versions and expiry verified)" in done.stdout
    newest = TufRepository(factory.home).root_versions(CI)[-1]
    assert (device.sota_dir / "tuf" / "root.json").read_bytes() == TufRepository(factory.home).root_json(CI, newest)


def test_a_device_whose_image_ships_no_root_fails_with_20_saying_where_it_looked(factory, make_device, tag,
                                                                                 tmp_path) -> None:
    add_target(factory, 1, tag)
    device = make_device("--tag", tag)
    empty = tmp_path / "empty-image.toml"
    empty.write_text(f'[storage]\nuptane_metadata_path = "{tmp_path / "nothing"}"\n')
    device.drop_ins = [empty]
    done = device.run("check")
    assert done.returncode == 20
    assert f"{tmp_path / 'nothing' / 'ci'} holds no N.root.json" in done.stderr
    assert not (device.sota_dir / "tuf" / "targets.json").exists()


def test_plain_mode_trusts_tls_alone_and_says_so(factory, make_device, tag, tmp_path) -> None:
    add_target(factory, 1, tag)
    device = make_device("--tag", tag)
    plain = tmp_path / "plain.toml"
    plain.write_text('[pacman]\ntuf_mode = "plain"\n')
    device.drop_ins = [plain]  # and no roots at all: plain mode reads no signature
    done = device.run("check")
    assert done.returncode == 0, done.stderr
    assert "TLS only (plain mode; TUF signatures not verified)" in done.stdout
    assert device.json("check", "--json")["trust"].startswith("TLS only")
    assert (device.sota_dir / "targets.json").is_file() and not (device.sota_dir / "tuf").exists()


def test_a_root_rotation_is_followed(factory, make_device, tag) -> None:
    add_target(factory, 1, tag)
    device = make_device("--tag", tag)
    assert device.run("check").returncode == 0
    old_root = json.loads((device.sota_dir / "tuf" / "root.json").read_bytes())["signed"]["version"]
    TufRepository(factory.home).rotate_root(("root", "timestamp"))
    add_target(factory, 2, tag)
    report = device.json("check", "--json")
    assert report["latest"]["version"] == 2
    assert json.loads((device.sota_dir / "tuf" / "root.json").read_bytes())["signed"]["version"] == old_root + 1


def test_the_gateway_refuses_a_client_without_a_certificate(factory) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{factory.info['gateway']}/device", verify=factory.info["ca"], timeout=10)


def test_the_registry_asks_for_a_token_and_the_device_gets_one_with_its_credentials(factory, make_device, tag) -> None:
    device = make_device("--tag", tag)
    creds = GatewayClient(Config.load((str(device.cfg),))).get_json("hub-creds/")
    registry = factory.info["registry"]
    anonymous = requests.get(f"https://{registry}/v2/", verify=factory.info["public_ca"], timeout=10)
    assert anonymous.status_code == 401
    challenge = anonymous.headers["WWW-Authenticate"]
    realm = challenge.split('realm="')[1].split('"')[0]
    service = challenge.split('service="')[1].split('"')[0]
    token = requests.get(realm, params={"service": service, "scope": "repository:factory/web:pull"},
                         auth=(creds["Username"], creds["Secret"]), verify=factory.info["ca"], timeout=10)
    assert token.status_code == 200
    authorised = requests.get(f"https://{registry}/v2/", verify=factory.info["public_ca"], timeout=10,
                              headers={"Authorization": f"Bearer {token.json()['token']}"})
    assert authorised.status_code == 200
