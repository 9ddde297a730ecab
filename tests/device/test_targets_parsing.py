"""Targets are parsed and chosen the way fioup does it, with nothing unverified let through."""

import pytest

from fioup_flow.errors import NoMatchingTargetError, TargetNotFoundError
from fioup_flow.reference import PinnedRef, ReferenceError
from fioup_flow.targets import parse_target, select_target

DIGEST = "sha256:" + "ab" * 32


def custom(version="1", hwids=("amd64-linux",), apps=None):
    apps = apps if apps is not None else {"web": {"uri": f"127.0.0.1:5000/factory/web@{DIGEST}"}}
    return {"version": version, "hardwareIds": list(hwids), "docker_compose_apps": apps}


def test_a_pinned_reference_splits_into_host_repository_and_digest() -> None:
    ref = PinnedRef.parse(f"127.0.0.1:5000/factory/web@{DIGEST}")
    assert (ref.host, ref.repository, ref.digest, ref.name) == ("127.0.0.1:5000", "factory/web", DIGEST, "web")
    assert str(ref.with_digest("sha256:" + "cd" * 32)) == "127.0.0.1:5000/factory/web@sha256:" + "cd" * 32


@pytest.mark.parametrize("written, host, repository", [
    ("docker.io/library/nginx", "docker.io", "library/nginx"),
    ("nginx", "docker.io", "library/nginx"),
    ("docker.io/nginx", "docker.io", "library/nginx"),
    ("index.docker.io/grafana/grafana:11.0", "docker.io", "grafana/grafana"),
    ("factory/web", "docker.io", "factory/web"),
    ("localhost/web", "localhost", "web"),
    ("hub.foundries.io/factory/web", "hub.foundries.io", "factory/web"),
])
def test_a_reference_is_named_as_docker_names_it_and_docker_io_is_fetched_from_registry_1(
        written: str, host: str, repository: str) -> None:
    """distribution's ParseNormalizedNamed (how composectl pins images) and containerd's host mapping."""
    ref = PinnedRef.parse(f"{written}@{DIGEST}")
    assert (ref.host, ref.repository) == (host, repository)
    assert ref.registry_host == ("registry-1.docker.io" if host == "docker.io" else host)


@pytest.mark.parametrize("bad", ["hub.io/factory/web:latest", "hub.io/Factory/web@" + DIGEST,
                                 "hub.io/factory/web@sha256:abc", "bad_host:x/web@" + DIGEST])
def test_a_reference_without_a_full_digest_or_with_a_bad_name_is_refused(bad: str) -> None:
    with pytest.raises(ReferenceError):
        PinnedRef.parse(bad)


def test_a_target_for_this_hardware_id_is_parsed_with_its_apps() -> None:
    target = parse_target("amd64-linux-lmp-1", custom(), "amd64-linux")
    assert target.version == 1 and [a.name for a in target.apps] == ["web"]


@pytest.mark.parametrize("info", [
    custom(hwids=("arm64-linux",)),
    custom(version="one"),
    custom(apps={"web": {"uri": "127.0.0.1:5000/factory/web:latest"}}),
    custom(apps={"api": {"uri": f"127.0.0.1:5000/factory/web@{DIGEST}"}}),
])
def test_a_target_for_another_device_or_malformed_is_skipped(info) -> None:
    assert parse_target("t", info, "amd64-linux") is None


def test_selection_takes_the_latest_or_the_version_asked_for(monkeypatch) -> None:
    targets = [parse_target(f"t-{v}", custom(str(v)), "amd64-linux") for v in (1, 2, 3)]
    assert select_target(targets).version == 3
    assert select_target(targets, 1).version == 1
    monkeypatch.setenv("FIOUP_VERSION_UPPER_LIMIT", "2")
    assert select_target(targets).version == 2
    with pytest.raises(TargetNotFoundError):
        select_target(targets, 7)
    with pytest.raises(NoMatchingTargetError):
        select_target([])
