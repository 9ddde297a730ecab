"""What the device tells the gateway about itself (`PUT /system_info`).

fioup sends `lshw -json` output; lshw is seldom on a minimal device, so we send a small,
stable description read from /proc and the standard library, which is what a fleet view needs.
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import Any


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

