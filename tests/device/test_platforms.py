"""A device picks the image of an index its engine runs: containerd's strict match, ARM variants included."""

from __future__ import annotations

import pytest

from fioup_flow.platforms import Platform, host_platform, matching


def child(name: str, os_name: str, arch: str, variant: str | None = None) -> dict:
    spec = {"os": os_name, "architecture": arch} | ({"variant": variant} if variant is not None else {})
    return {"digest": name, "platform": spec}


# What `docker buildx` pushes for a multi-platform image, with its attestation entries.
INDEX = [
    child("arm/v6", "linux", "arm", "v6"),
    child("arm/v7", "linux", "arm", "v7"),
    child("arm64", "linux", "arm64", "v8"),
    child("amd64", "linux", "amd64"),
    child("attestation", "unknown", "unknown"),
]


@pytest.mark.parametrize("machine, host, picked", [
    ("x86_64", Platform("linux", "amd64"), ["amd64"]),
    ("aarch64", Platform("linux", "arm64"), ["arm64"]),
    ("armv7l", Platform("linux", "arm", "v7"), ["arm/v7"]),
    ("armv6l", Platform("linux", "arm", "v6"), ["arm/v6"]),
    ("armv8l", Platform("linux", "arm", "v8"), []),  # 32-bit on a v8 CPU: strict, no fallback to v7
    ("riscv64", Platform("linux", "riscv64"), []),
])
def test_each_host_gets_exactly_the_child_of_its_architecture_and_variant(machine, host, picked) -> None:
    assert host_platform(machine) == host
    assert [c["digest"] for c in matching(INDEX, host)] == picked


@pytest.mark.parametrize("spec, machines", [
    # containerd normalises both sides: arm alone is arm/v7, arm64/v8 is arm64, x86_64 is amd64
    (("linux", "arm", None), ["armv7l"]),
    (("linux", "arm", "7"), ["armv7l"]),
    (("linux", "arm64", None), ["aarch64"]),
    (("linux", "aarch64", "8"), ["aarch64"]),
    (("linux", "x86_64", None), ["x86_64"]),
    (("linux", "amd64", "v1"), ["x86_64"]),
    (("linux", "armhf", None), ["armv7l"]),
    (("linux", "armel", None), ["armv6l"]),
    (("LINUX", "ARM", "V6"), ["armv6l"]),
    (("linux", "arm", "v5"), []),  # strict: no v7 or v6 host takes an older variant
    (("linux", "arm64", "v8.2"), []),
    (("windows", "amd64", None), []),
])
def test_index_entries_are_normalised_as_containerd_does(spec, machines) -> None:
    entry = [child("it", *spec)]
    hosts = ("x86_64", "aarch64", "armv7l", "armv6l")
    assert [m for m in hosts if matching(entry, host_platform(m))] == machines


def test_an_entry_without_a_platform_matches_nothing() -> None:
    assert matching([{"digest": "bare"}, {"digest": "null", "platform": None}, "junk"], host_platform("x86_64")) == []
