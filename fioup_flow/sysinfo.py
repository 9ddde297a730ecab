"""What the device tells the gateway about itself: `PUT /system_info`, `/system_info/network` and
`/system_info/config`, as fioup does at the start of every run (`pkg/client/sysinfo*.go`).

fioup sends `lshw -json` output; lshw is seldom on a minimal device, so we send a small,
stable description read from /proc and the standard library, which is what a fleet view needs.
The network report names the interface of the default route as fioup does (`/proc/net/route`),
and the config report is the merged configuration as TOML. fioup sends each only when it
differs from what it last uploaded; `state_reports` gives them as state reports, which the
outbox queues only when they changed.
"""

from __future__ import annotations

import fcntl
import os
import platform
import socket
import struct
from pathlib import Path
from typing import Any

import tomli_w

from fioup_flow.outbox import StateReport, fingerprint

SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def _meminfo_kib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _os_release() -> dict[str, str]:
    try:
        pairs = (line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
        return {k: v.strip('"') for k, v in pairs}
    except OSError:
        return {}


def system_info() -> dict[str, Any]:
    """Hardware and OS facts, in the spirit of `lshw -json` (id, class, product, children)."""
    release = _os_release()
    return {
        "id": socket.gethostname(),
        "class": "system",
        "description": "Computer",
        "product": release.get("PRETTY_NAME", platform.system()),
        "configuration": {"kernel": platform.release(), "arch": platform.machine()},
        "children": [
            {"id": "cpu", "class": "processor", "count": os.cpu_count()},
            {"id": "memory", "class": "memory", "size": (_meminfo_kib() or 0) * 1024, "units": "bytes"},
        ],
    }


def _default_interface() -> str | None:
    """The interface of the default route, from /proc/net/route (destination 00000000)."""
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return None
    return next((f[0] for f in (line.split() for line in lines) if len(f) > 4 and f[1] == "00000000"), None)


def _ipv4(interface: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", interface.encode()[:15]))
        except OSError:
            return ""
    return socket.inet_ntoa(packed[20:24])


def network_info() -> dict[str, Any]:
    """Hostname, and the address and MAC of the default route's interface (no traffic is sent)."""
    interface = _default_interface()
    if interface is None:
        return {"hostname": socket.gethostname(), "local_ipv4": "", "mac": ""}
    try:
        mac = Path(f"/sys/class/net/{interface}/address").read_text().strip()
    except OSError:
        mac = ""
    return {"hostname": socket.gethostname(), "local_ipv4": _ipv4(interface), "mac": mac}


def state_reports(config_values: dict[str, Any]) -> list[StateReport]:
    """The three system-info reports, in fioup's order (network, config, hardware)."""
    reports = [("system_info/network", network_info()), ("system_info/config", tomli_w.dumps(config_values)),
               ("system_info", system_info())]
    return [StateReport(topic, "PUT", payload, fingerprint(payload)) for topic, payload in reports]
