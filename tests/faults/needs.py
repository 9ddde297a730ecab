"""What the power-cut filesystem needs on this machine, as pytest skip marks with their reasons."""

from __future__ import annotations

import os
import shutil

import pytest

FUSE = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting FUSE here needs root"),
    pytest.mark.skipif(shutil.which("fusermount3") is None, reason="needs fuse3 (fusermount3)"),
]
