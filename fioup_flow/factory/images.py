"""Runnable container images built on the spot from Debian's busybox-static: no Docker, no pull.

The factory must publish real images on a machine without internet access. An image here is:

* layer 1: `/bin/busybox` plus symlinks for the applets services use (identical in every image,
  so a device fetches it once and the layer is shared between apps);
* layer 2: the service's own files (a folder copied to `/`);
* optional filler layers of incompressible bytes from a seeded PRNG, so benchmarks can publish
  apps of a chosen size (same seed -> same bytes -> same digests);
* a Docker image config (Cmd, Entrypoint, Env, ExposedPorts, WorkingDir, Healthcheck) whose
  `rootfs.diff_ids` are the sha256 of the *uncompressed* layer tars, as the engine checks at load.

Layers are deterministic (sorted entries, mtime 0, uid/gid 0, gzip header mtime 0), so building
the same image twice gives the same digests and republishing an unchanged app pushes nothing new.
The manifest is Docker v2 schema 2: the single-platform type composeapp accepts for a service.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

BUSYBOX = Path("/bin/busybox")
APPLETS = ("cat", "cp", "date", "echo", "env", "false", "grep", "head", "httpd", "id", "ls",
           "mkdir", "mv", "nc", "printf", "rm", "sed", "sh", "sleep", "tail", "test", "touch", "true",
           "wc", "wget")

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"

FILLER_LAYER_MAX_MB = 64
FS_BLOCK_SIZE = 4096
_MIB = 1024 * 1024
_NANOS = 1_000_000_000


def host_arch() -> str:
    """The OCI architecture name of this machine (what busybox-static was built for)."""
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


@dataclass(frozen=True)
class Blob:
    """A content-addressed file written by a build, ready to push."""

    digest: str
    size: int
    path: Path
    media_type: str

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


class BlobDir:
    """Content-addressed build output (`<root>/sha256/<hex>`): a blob is written once."""

    def __init__(self, root: Path):
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / "sha256" / digest.split(":", 1)[1]

    def add_bytes(self, data: bytes, media_type: str) -> Blob:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.path(digest)
        if not path.exists():
            path.write_bytes(data)
        return Blob(digest, len(data), path, media_type)

    def add_layer(self, entries: list[tarfile.TarInfo], contents: dict[str, BinaryIO],
                  compresslevel: int) -> Layer:
        """Write a gzip tar of `entries`; returns it with its diff_id and unpacked footprint."""
        tmp = self.root / "layer.tmp"
        with tmp.open("wb") as raw:
            compressed = _HashingWriter(raw)
            with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, compresslevel=compresslevel) as gz:
                uncompressed = _HashingWriter(gz)
                with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    for info in sorted(entries, key=lambda i: i.name):
                        tar.addfile(info, contents.get(info.name))
        digest = "sha256:" + compressed.sha.hexdigest()
        tmp.replace(self.path(digest))
        blob = Blob(digest, compressed.size, self.path(digest), LAYER_TYPE)
        return Layer(blob, "sha256:" + uncompressed.sha.hexdigest(), *_footprint(entries))


def _footprint(entries: list[tarfile.TarInfo]) -> tuple[int, int]:
    """(bytes of file data, estimated disk usage once unpacked: whole blocks, a block per dir)."""
    size = sum(info.size for info in entries if info.isfile())
    usage = sum(-(-info.size // FS_BLOCK_SIZE) * FS_BLOCK_SIZE for info in entries if info.isfile())
    return size, usage + FS_BLOCK_SIZE * sum(1 for info in entries if info.isdir())


@dataclass(frozen=True)
class Layer:
    """A layer blob with what the engine will see: its diff_id, its data size and disk usage
    (the last two are what composeapp's "layers meta" tells a device for its space check)."""

    blob: Blob
    diff_id: str
    size: int
    usage: int

    def meta(self) -> dict[str, int]:
        return {"size": self.size, "usage": self.usage, "archive_size": self.blob.size}


class _HashingWriter:
    """A write-only file that hashes and counts what passes through (one pass per layer)."""

    def __init__(self, inner: BinaryIO):
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.inner.write(data)

    def flush(self) -> None:
        self.inner.flush()


@dataclass
class ImageSpec:
    """What a service image holds and how it starts (mirrors the image config's fields)."""

    name: str
    files: Path | None = None
    cmd: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    expose: list[int] = field(default_factory=list)
    workdir: str = "/"
    healthcheck: dict | None = None
    filler_mb: int = 0
    filler_seed: str = ""


@dataclass(frozen=True)
class BuiltImage:
    manifest: bytes
    config: Blob
    layers: list[Blob]
    layers_meta: dict[str, dict[str, int]] = field(default_factory=dict)  # layer digest -> Layer.meta()

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    @property
    def blobs(self) -> list[Blob]:
        return [self.config, *self.layers]


def tar_entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, size: int = 0,
              linkname: str = "") -> tarfile.TarInfo:
    """A tar header with nothing that varies between builds (owner root, mtime 0)."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, linkname
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def _busybox_layer(blobs: BlobDir) -> Layer:
    data = BUSYBOX.read_bytes()
    entries = [tar_entry("bin", tarfile.DIRTYPE, 0o755), tar_entry("tmp", tarfile.DIRTYPE, 0o1777),
               tar_entry("etc", tarfile.DIRTYPE, 0o755),
               tar_entry("bin/busybox", mode=0o755, size=len(data))]
    entries += [tar_entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777, linkname="busybox") for applet in APPLETS]
    passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
    group = b"root:x:0:\nnogroup:x:65534:\n"
    entries += [tar_entry("etc/passwd", size=len(passwd)), tar_entry("etc/group", size=len(group))]
    contents = {"bin/busybox": io.BytesIO(data), "etc/passwd": io.BytesIO(passwd), "etc/group": io.BytesIO(group)}
    return blobs.add_layer(entries, contents, compresslevel=6)


def _files_layer(blobs: BlobDir, root: Path) -> Layer:
    """The service's folder copied to `/` (directories, regular files and symlinks)."""
    entries, contents = [], {}
    for path in root.rglob("*"):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            entries.append(tar_entry(name, tarfile.SYMTYPE, 0o777, linkname=str(path.readlink())))
        elif path.is_dir():
            entries.append(tar_entry(name, tarfile.DIRTYPE, 0o755))
        else:
            data = path.read_bytes()
            mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            entries.append(tar_entry(name, mode=mode, size=len(data)))
            contents[name] = io.BytesIO(data)
    return blobs.add_layer(entries, contents, compresslevel=6)


class _PrngStream(io.RawIOBase):
    """`size` incompressible bytes from a PRNG seeded with `seed`, read in chunks (bounded memory)."""

    def __init__(self, seed: str, size: int):
        self.rng = random.Random(seed)
        self.left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return self.rng.randbytes(n)


def _filler_layers(blobs: BlobDir, total_mb: int, seed: str) -> list[Layer]:
    layers, index = [], 0
    while total_mb > 0:
        mb = min(total_mb, FILLER_LAYER_MAX_MB)
        name = f"filler/{index:03d}.bin"
        stream = _PrngStream(f"{seed}/{index}", mb * _MIB)
        entries = [tar_entry("filler", tarfile.DIRTYPE, 0o755), tar_entry(name, size=mb * _MIB)]
        # Level 0 (stored blocks): the data does not compress anyway; this keeps the build fast.
        layers.append(blobs.add_layer(entries, {name: stream}, compresslevel=0))
        total_mb -= mb
        index += 1
    return layers


def _duration_ns(value: str | int | float) -> int:
    """Compose-style durations (`5s`, `1m`, `500ms`) or seconds -> nanoseconds (image config unit)."""
    if isinstance(value, (int, float)):
        return int(value * _NANOS)
    for suffix, scale in (("ms", _NANOS // 1000), ("s", _NANOS), ("m", 60 * _NANOS), ("h", 3600 * _NANOS)):
        if value.endswith(suffix) and value[: -len(suffix)].replace(".", "", 1).isdigit():
            return int(float(value[: -len(suffix)]) * scale)
    raise ValueError(f"not a duration: {value!r}")


def _healthcheck(spec: dict) -> dict:
    check = {"Test": spec["test"] if isinstance(spec["test"], list) else ["CMD-SHELL", spec["test"]]}
    for key, field_name in (("interval", "Interval"), ("timeout", "Timeout"), ("start_period", "StartPeriod")):
        if key in spec:
            check[field_name] = _duration_ns(spec[key])
    if "retries" in spec:
        check["Retries"] = int(spec["retries"])
    return check


def _config(spec: ImageSpec, diff_ids: list[str]) -> dict:
    env = {"PATH": "/bin", **spec.env}
    container: dict = {
        "Env": [f"{k}={v}" for k, v in env.items()],
        "Cmd": spec.cmd or None,
        "Entrypoint": spec.entrypoint or None,
        "WorkingDir": spec.workdir,
        "ExposedPorts": {f"{port}/tcp": {} for port in spec.expose} or None,
        "Labels": {"org.foundries.fioup-flow.image": spec.name},
    }
    if spec.healthcheck:
        container["Healthcheck"] = _healthcheck(spec.healthcheck)
    return {
        "architecture": host_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {k: v for k, v in container.items() if v is not None},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "fioup-flow-factory"} for _ in diff_ids],
    }


def build_image(spec: ImageSpec, blobs: BlobDir) -> BuiltImage:
    """Build `spec` into `blobs`; the same spec always yields the same manifest digest."""
    layers = [_busybox_layer(blobs)]
    if spec.files is not None:
        layers.append(_files_layer(blobs, spec.files))
    layers += _filler_layers(blobs, spec.filler_mb, f"{spec.name}/{spec.filler_seed}")
    config = blobs.add_bytes(json.dumps(_config(spec, [layer.diff_id for layer in layers]), sort_keys=True).encode(),
                             CONFIG_TYPE)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": config.descriptor(),
        "layers": [layer.blob.descriptor() for layer in layers],
    }
    return BuiltImage(json.dumps(manifest, indent=3).encode(), config, [layer.blob for layer in layers],
                      {layer.blob.digest: layer.meta() for layer in layers})


def docker_save_tar(image: BuiltImage, repo_tag: str, out: BinaryIO) -> None:
    """A `docker save`-style tar of `image` whose layers are the registry's gzip blobs.

    Used by tests to prove an image loads (`POST /images/load`) and runs; the device builds
    the same shape from its blob store.
    """
    manifest = [{"Config": image.config.digest.split(":")[1], "RepoTags": [repo_tag],
                 "Layers": [layer.digest.split(":")[1] for layer in image.layers]}]
    data = json.dumps(manifest).encode()
    with tarfile.open(fileobj=out, mode="w|") as tar:
        tar.addfile(tar_entry("manifest.json", size=len(data)), io.BytesIO(data))
        for blob in image.blobs:
            name = blob.digest.split(":")[1]
            with blob.path.open("rb") as f:
                tar.addfile(tar_entry(name, size=blob.size), f)
