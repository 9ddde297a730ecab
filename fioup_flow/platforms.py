"""Which manifest of a multi-platform image index this device runs, picked as the engine would.

composeapp picks an index's children with containerd's `platforms.OnlyStrict(DefaultSpec())`
(`composeapp.md` section 1.6): the host's OS, architecture and, on ARM, variant, each side
normalised the containerd way (`platforms/database.go` `normalizeArch`), then compared for
equality, with no fallback to older variants (arm/v7 does not take arm/v6, arm64 not arm/v7)
and attestation entries (`unknown/unknown`) never matching. So an index holding both arm/v6
and arm/v7 gives an armv7l device exactly the v7 image, and an armv6l one exactly the v6 image.

containerd reads the host's ARM variant from `/proc/cpuinfo` first and falls back to the
kernel's machine name (`uname -m`, here `platform.machine()`); fioup-flow uses the machine name
only, which says the same on the devices it targets (`armv6l` on a Raspberry Pi Zero, whose
cpuinfo quirk containerd corrects back to v6).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Platform:
    """A normalised OCI platform: `os`/`architecture`[/`variant`]."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def normalize(os_name: str, architecture: str, variant: str = "") -> Platform:
    """containerd's canonical form: `aarch64` is `arm64` (v8 implied), `arm` alone is arm/v7, and so on."""
    os_name, arch, variant = os_name.lower(), architecture.lower(), variant.lower()
    if arch == "i386":
        arch, variant = "386", ""
    elif arch in ("x86_64", "x86-64", "amd64"):
        arch, variant = "amd64", "" if variant == "v1" else variant
    elif arch in ("aarch64", "arm64"):
        arch = "arm64"
        variant = {"8": "", "v8": "", "v8.0": "", "9": "v9", "9.0": "v9", "v9.0": "v9"}.get(variant, variant)
    elif arch == "armhf":
        arch, variant = "arm", "v7"
    elif arch == "armel":
        arch, variant = "arm", "v6"
    elif arch == "arm":
        variant = {"": "v7", "7": "v7", "5": "v5", "6": "v6", "8": "v8"}.get(variant, variant)
    return Platform("darwin" if os_name == "macos" else os_name, arch, variant)


def host_platform(machine: str | None = None) -> Platform:
    """The platform the engine on this host runs: `machine` is `uname -m` (default: this host's)."""
    machine = (machine or platform.machine()).lower()
    if machine.startswith("armv") and len(machine) >= 5:
        # containerd's getCPUVariantFromArch: armv7l -> v7, armv6l -> v6, armv8l (32-bit) -> v8
        variant = f"v{machine[4]}" if machine[4] in "345678" else "unknown"
        return normalize("linux", "arm", variant)
    if machine in ("i486", "i586", "i686"):
        machine = "i386"
    return normalize("linux", machine)


def matching(manifests: list[Any], host: Platform) -> list[dict[str, Any]]:
    """The children of an index that `host` runs (OnlyStrict: equal once both sides are normalised).

    A child without a platform matches nothing (composeapp would dereference nil on it).
    """
    found = []
    for child in manifests:
        spec = child.get("platform") if isinstance(child, dict) else None
        if not isinstance(spec, dict):
            continue
        # containerd takes a missing OS for its own (linux, on a device)
        candidate = normalize(str(spec.get("os") or "linux"), str(spec.get("architecture") or ""),
                              str(spec.get("variant") or ""))
        if candidate == host:
            found.append(child)
    return found
