"""A `docker save`-style tar of an app's images, streamed from the blob store with bounded memory.

`POST /images/load` accepts the legacy `docker save` layout: `manifest.json` (one entry per
image: config file, tags, layer files) followed by the files it names. The layer files may be
the registry's still-compressed blobs; the engine decompresses them and checks them against
the config's `diff_ids`, so nothing unverified gets in. Entries are written by hand (header,
data in chunks, padding) so that a 200 MB layer never sits in memory.
"""

from __future__ import annotations

import json
import tarfile
from typing import Iterable, Iterator

from fioup_flow.composeapp import Image
from fioup_flow.store import BlobStore

BLOCK = 512
CHUNK = 1024 * 1024


def local_tag(image: Image) -> str:
    """The tag an image is loaded under: its repository and platform manifest digest.

    The compose file pins `repo@sha256:<digest>`, which a classic image store cannot resolve
    after a load (only a pull records digests), so the installed project refers to this tag.
    """
    ref = image.manifest.ref
    return f"{ref.host}/{ref.repository}:{ref.hex}"


def manifest_json(images: Iterable[Image]) -> bytes:
    entries = [{
        "Config": image.config.digest.split(":")[1],
        "RepoTags": [local_tag(image)],
        "Layers": [layer.digest.split(":")[1] for layer in image.layers],
    } for image in images]
    return json.dumps(entries).encode()


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def save_stream(images: list[Image], store: BlobStore) -> Iterator[bytes]:
    """The tar, chunk by chunk: manifest.json, then each config and layer blob once."""
    manifest = manifest_json(images)
    yield _header("manifest.json", len(manifest)) + manifest + _padding(len(manifest))
    written: set[str] = set()
    for image in images:
        for blob in (image.config, *image.layers):
            if blob.digest in written:
                continue
            written.add(blob.digest)
            yield _header(blob.digest.split(":")[1], blob.size)
            with store.open(blob.digest) as f:
                while chunk := f.read(CHUNK):
                    yield chunk
            yield _padding(blob.size)
    yield b"\0" * (2 * BLOCK)
