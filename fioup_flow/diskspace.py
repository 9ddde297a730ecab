"""Will the update fit? fioup's rule (`pacman.storage_watermark`), with its figures.

The apps may fill `watermark`% of the filesystem that holds the blob store; the rest is kept
free for the system. An update needs room for the blobs it still has to download (rounded up
to the filesystem's blocks) plus what the engine needs once the images are loaded (for a layer,
its unpacked size from the app's layers meta when published, else fioup's estimate of five
times its compressed size; the engine is assumed to share the disk).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

LAYER_RUNTIME_FACTOR = 5


@dataclass(frozen=True)
class StorageStat:
    size: int
    free: int
    reserved: int
    available: int
    required: int

    @property
    def fits(self) -> bool:
        return self.required <= self.available

    def as_json(self) -> dict[str, int]:
        return asdict(self)

    def describe(self) -> str:
        mib = 1024 * 1024
        return (f"the update needs {self.required / mib:.1f} MiB but {self.available / mib:.1f} MiB are available "
                f"({self.free / mib:.1f} MiB free, {self.reserved / mib:.1f} MiB reserved of {self.size / mib:.1f} MiB)")


def existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def aligned(size: int, block: int) -> int:
    return -(-size // block) * block


def required_bytes(missing: list[tuple[int, int, int | None]], block: int) -> int:
    """Room for blobs still to fetch: (size, bytes already fetched, unpacked size) each.

    Each takes its download in the store plus what the engine needs once it is loaded: the
    unpacked size for a layer (-1 when unknown: fioup's estimate applies), the blob's own size
    again for any other blob (None), whose copy the engine keeps too; composectl counts the same.
    """
    total = 0
    for size, fetched, unpacked in missing:
        total += aligned(size - fetched, block)
        if unpacked is None:
            total += aligned(size, block)
        else:
            total += aligned(unpacked, block) if unpacked >= 0 else LAYER_RUNTIME_FACTOR * size
    return total


def storage_stat(store_root: Path, watermark: int, missing: list[tuple[int, int, int | None]]) -> StorageStat:
    st = os.statvfs(existing_parent(store_root))
    size = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    reserved = size * (100 - watermark) // 100
    return StorageStat(size=size, free=free, reserved=reserved, available=max(0, free - reserved),
                       required=required_bytes(missing, st.f_bsize or 4096))
