"""A device registers with its factory and learns, securely, which Targets exist for it.

Runs against the session's real local factory (gateway over mutual TLS, TUF-signed metadata,
registry with token auth) through the real `fioup-flow` command.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from support import register

from fioup_flow.config import Config
from fioup_flow.factory.tufrepo import TufRepository
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
    for name in ("client.pem", "root.crt", "tuf/root.json"):
        assert (device.sota_dir / name).is_file()
    whoami = device.json("whoami", "--json")
    assert whoami["name"] == device.name


def test_a_wrong_registration_token_is_refused(factory, tmp_path) -> None:
    done = register(dict(factory.info, registration_token="wrong"), tmp_path / "d")
    assert done.returncode == 6 and "401" in done.stderr
    assert not (tmp_path / "d" / "sota.toml").exists()


def views(factory) -> list[Path]:
    return sorted(factory.home.tuf.glob("views/*"))


def trusted(device, name: str) -> bytes:
    return (device.sota_dir / "tuf" / name).read_bytes()


class TestMetadataThatDoesNotVerifyIsRefused:
    """Each attack leaves exit code 20 and the metadata trusted before in place."""

    def setup_device(self, factory, make_device, tag):
        add_target(factory, 1, tag)
        device = make_device("--tag", tag)
        assert device.run("check").returncode == 0
        return device, trusted(device, "targets.json")

    def served(self, factory, device, name: str) -> Path:
        """The file the gateway serves to this device (its view of the repository)."""
        config = Config.load((str(device.cfg),))
        GatewayClient(config).request("GET", "repo/timestamp.json")  # make sure the view exists
        matches = [v / name for v in views(factory) if (v / name).exists()
                   and json.loads((v / "targets.json").read_text())["signed"]["targets"]
                   and any(config.tags[0] in t["custom"].get("tags", [])
                           for t in json.loads((v / "targets.json").read_text())["signed"]["targets"].values())]
        assert len(matches) == 1, matches
        return matches[0]

    def test_a_tampered_targets_file(self, factory, make_device, tag) -> None:
        device, before = self.setup_device(factory, make_device, tag)
        add_target(factory, 2, tag)
        path = self.served(factory, device, "targets.json")
        doc = json.loads(path.read_text())
        doc["signed"]["targets"][next(iter(doc["signed"]["targets"]))]["custom"]["version"] = "99"
        path.write_text(json.dumps(doc))
        done = device.run("check")
        assert done.returncode == 20 and "targets" in done.stderr.lower()
        assert trusted(device, "targets.json") == before

    def test_an_expired_timestamp(self, factory, make_device, tag) -> None:
        device, before = self.setup_device(factory, make_device, tag)
        TufRepository(factory.home).resign(timestamp_expires=datetime.now(timezone.utc) - timedelta(minutes=1))
        try:
            done = device.run("check")
            assert done.returncode == 20 and "expired" in done.stderr.lower()
            assert trusted(device, "targets.json") == before
        finally:
            TufRepository(factory.home).resign()

    def test_a_replayed_older_snapshot(self, factory, make_device, tag) -> None:
        device, before = self.setup_device(factory, make_device, tag)
        old_snapshot = self.served(factory, device, "snapshot.json").read_bytes()
        add_target(factory, 2, tag)  # the repository moves on; the device has not seen it yet
        self.served(factory, device, "snapshot.json").write_bytes(old_snapshot)
        done = device.run("check")
        assert done.returncode == 20 and "snapshot" in done.stderr.lower()
        assert trusted(device, "targets.json") == before


def test_a_root_rotation_is_followed(factory, make_device, tag) -> None:
    add_target(factory, 1, tag)
    device = make_device("--tag", tag)
    assert device.run("check").returncode == 0
    old_root = json.loads(trusted(device, "root.json"))["signed"]["version"]
    TufRepository(factory.home).rotate_root(("root", "timestamp"))
    add_target(factory, 2, tag)
    report = device.json("check", "--json")
    assert report["latest"]["version"] == 2
    assert json.loads(trusted(device, "root.json"))["signed"]["version"] == old_root + 1


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
