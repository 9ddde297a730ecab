"""Fixtures shared by every test: devices registered against the session's local factory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from ciskips import (  # noqa: F401 - hooks: under CI=true a skipped test fails the run
    pytest_collectreport,
    pytest_configure,
    pytest_runtest_logreport,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
from core_factory import Factory, start_factory, stop_factory
from support import Device, claim_engine, fresh_device, new_device, publish

# version -> the sample apps of that Target, published under the tag `updates`
RELEASES = {
    1: {"shellhttpd": "shellhttpd/v1", "pair": "pair/v1"},
    2: {"shellhttpd": "shellhttpd/v2", "pair": "pair/v1"},
    3: {"shellhttpd": "shellhttpd/v2", "ticker": "ticker/v1"},
}
RELEASE_TAG = "updates"


_ENGINE_LOCK = claim_engine()  # before anything reads DOCKER_HOST


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked `long` first: in parallel runs, a long one started last would leave its
    worker running alone at the end while the others idle (the order is otherwise kept)."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(scope="session")
def factory(tmp_path_factory) -> Iterator[Factory]:
    """One real local factory for the session: `up` in a temporary home, `down` at the end.

    Its registries' certificates come from a CA standing for the Web PKI, which a device trusts
    through its system's CA store: the fioup-flow processes of the session get `SSL_CERT_FILE`
    naming the system's bundle plus that CA (this machine's own store is left alone).
    """
    running = start_factory(tmp_path_factory.mktemp("factory") / "home")
    before = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = running.info["ca_bundle"]
    try:
        yield running
    finally:
        if before is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = before
        stop_factory(running)


@pytest.fixture
def make_device(factory, tmp_path: Path):
    """Register a new device (tags, hardware ID as asked) and return it."""
    count = iter(range(1000))

    def make(*extra: str) -> Device:
        return new_device(factory.info, tmp_path / f"device{next(count)}", *extra)

    return make


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    if not os.environ.get("DOCKER_HOST"):
        pytest.skip("needs a Docker engine: scripts/test starts a private one and sets DOCKER_HOST")
    return docker.from_env()


@pytest.fixture(scope="session")
def releases(factory) -> str:
    """The sample releases, published once per session; returns their tag."""
    for version, apps in RELEASES.items():
        publish(factory.home.root, version, apps, RELEASE_TAG)
    return RELEASE_TAG


@pytest.fixture
def device(factory, releases, engine, tmp_path) -> Device:
    """A freshly registered device following the sample releases, on an engine with nothing on it."""
    with fresh_device(factory, engine, tmp_path / "sota", releases) as fresh:
        yield fresh
