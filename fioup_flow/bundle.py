"""Unpacking an app bundle into its compose project, refusing anything that could escape it.

The bundle is a gzip tar from the registry; its digest was verified, but a verified archive can
still be hostile (a compromised publisher, a bug upstream). So every entry is checked before a
byte is written: no absolute paths, no `..`, no links that leave the project, no device files,
FIFOs or sockets, sizes under caps. Unpacking goes to a fresh folder that is synced before
the caller renames it into place, and the result is checked against the bundle index.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from fioup_flow.durable import fsync_dir, make_dirs
from fioup_flow.errors import InstallError

MAX_FILE = 1024 * 1024 * 1024 - 1024 * 1024
MAX_TOTAL = 1024 * 1024 * 1024


def _safe_name(name: str, app: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise InstallError(f"app {app}: bundle entry {name!r} points outside the project; nothing was installed")
    return PurePosixPath(*[p for p in path.parts if p != "."]) if path.parts else path


def _check_member(member: tarfile.TarInfo, app: str, total: int) -> PurePosixPath:
    relative = _safe_name(member.name, app)
    if member.isdev() or member.isfifo() or not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise InstallError(f"app {app}: bundle entry {member.name!r} is a device, FIFO or other special file")
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        resolved = target if member.islnk() else relative.parent / target
        if target.is_absolute() or not _stays_inside(resolved):
            raise InstallError(f"app {app}: bundle link {member.name!r} -> {member.linkname!r} leaves the project")
    if member.size > MAX_FILE or total + member.size > MAX_TOTAL:
        raise InstallError(f"app {app}: bundle entry {member.name!r} exceeds the size limits")
    return relative


def _stays_inside(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return False
    return True


def unpack(bundle: BinaryIO, dest: Path, app: str) -> None:
    """Unpack the gzip tar `bundle` into the new folder `dest` (removed first if left by a crash)."""
    shutil.rmtree(dest, ignore_errors=True)
    make_dirs(dest)
    total = 0
    try:
        with tarfile.open(fileobj=bundle, mode="r:gz") as tar:
            for member in tar:
                relative = _check_member(member, app, total)
                total += member.size
                if relative.parts:
                    _extract(tar, member, dest / relative, dest)
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise InstallError(f"app {app}: the bundle cannot be unpacked: {exc}") from exc
    except InstallError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    sync_tree(dest)


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, root: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if member.isdir():
        path.mkdir(exist_ok=True)
    elif member.issym():
        path.symlink_to(member.linkname)
    elif member.islnk():
        os.link(root / _safe_name(member.linkname, ""), path)
    else:
        with tar.extractfile(member) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
        os.chmod(path, member.mode & 0o755)


def sync_tree(root: Path) -> None:
    """fsync every file and folder below `root`, deepest first, so a rename of `root` is durable."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            path = Path(folder, name)
            if not path.is_symlink():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(Path(folder))


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def index_mismatches(project: Path, index: dict[str, str]) -> list[str]:
    """Files of the bundle index that are missing from `project` or differ from it (empty: all good)."""
    problems = []
    for name, digest in sorted(index.items()):
        path = project / _safe_name(name, project.name)
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif file_digest(path) != digest:
            problems.append(f"{name}: content differs")
    return problems
