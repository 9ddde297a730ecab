"""Unpacking an app bundle into its compose project, refusing anything that could escape it.

The bundle is a gzip tar from the registry; its digest was verified, but a verified archive can
still be hostile (a compromised publisher, a bug upstream). Each entry's header is checked
before a byte is written: no absolute paths, no `..`, no device files, FIFOs or sockets, sizes
under composeapp's caps. Judging each entry by its own text is not enough, though: links that
earlier entries made could carry a later entry out of the project (`a -> .`, `a/b -> ..`, then
`a/b/c/x`). So escaping is made impossible by construction, on the real filesystem:

* nothing is ever written through a symlink: every folder on an entry's way is looked at on
  disk (lstat) and must be a real folder; an entry whose path passes through a link is refused;
* every entry makes a new name, without following links (`O_EXCL | O_NOFOLLOW`): a second
  entry for a path already there, which could turn a file or folder into a link, is refused
  (a folder named again is fine);
* a hard link must name a regular file unpacked before it, reached through real folders only;
* once every entry is in place, each symlink is followed link by link inside the project, and
  one that leads out of it at any step (or loops) is refused, so a container that follows it
  at run time stays inside too.

Unpacking goes to a fresh folder that is synced before the caller renames it into place, and
the result is checked against the bundle index.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from fioup_flow.durable import fsync_dir, make_dirs
from fioup_flow.errors import InstallError

# composeapp's caps (`pkg/compose/v1/app.go`): the compose file, any other file, the whole bundle.
COMPOSE_MAX = 1024 * 1024
MAX_FILE = 1024 * 1024 * 1024 - COMPOSE_MAX
MAX_TOTAL = COMPOSE_MAX + MAX_FILE
MAX_LINK_HOPS = 40  # the kernel's limit (ELOOP): a longer chain is taken for a loop


def lands_at(name: str) -> PurePosixPath | None:
    """Where a bundle entry lands, relative to the project, or None if it names a path outside it.

    PurePosixPath drops `.` parts and repeated or trailing slashes, so `./a//b` lands at `a/b`
    (and `.` at the project itself), while `.a` and `../a` stay what they are.
    """
    path = PurePosixPath(name)
    return None if path.is_absolute() or ".." in path.parts else path


def entry_path(name: str, app: str) -> PurePosixPath:
    """Where a bundle entry lands, relative to the project; InstallError if it would land outside."""
    path = lands_at(name)
    if path is None:
        raise InstallError(f"app {app}: bundle entry {name!r} points outside the project; nothing was installed")
    return path


def _check_member(member: tarfile.TarInfo, app: str, total: int) -> PurePosixPath:
    relative = entry_path(member.name, app)
    if member.isdev() or member.isfifo() or not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise InstallError(f"app {app}: bundle entry {member.name!r} is a device, FIFO or other special file")
    if member.size > MAX_FILE or total + member.size > MAX_TOTAL:
        raise InstallError(f"app {app}: bundle entry {member.name!r} exceeds the size limits")
    return relative


def unpack(bundle: BinaryIO, dest: Path, app: str) -> None:
    """Unpack the gzip tar `bundle` into the new folder `dest` (removed first if left by a crash).

    The tar is read as a stream: memory stays small whatever the bundle's size.
    """
    shutil.rmtree(dest, ignore_errors=True)
    make_dirs(dest)
    try:
        links = _extract_all(bundle, dest, app)
        for link in links:
            if not _resolves_inside(dest, link):
                raise InstallError(f"app {app}: bundle link {link.as_posix()!r} -> {os.readlink(dest / link)!r} "
                                   f"leads out of the project, or loops")
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise InstallError(f"app {app}: the bundle cannot be unpacked: {exc}") from exc
    except InstallError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    sync_tree(dest)


def _extract_all(bundle: BinaryIO, dest: Path, app: str) -> list[PurePosixPath]:
    """Write every entry under `dest`; returns the symlinks made, to be checked once all are in place."""
    total = 0
    links = []
    with tarfile.open(fileobj=bundle, mode="r|gz") as tar:
        for member in tar:
            relative = _check_member(member, app, total)
            total += member.size
            if relative.parts:
                _extract(tar, member, relative, dest, app)
                if member.issym():
                    links.append(relative)
    return links


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, relative: PurePosixPath, root: Path, app: str) -> None:
    path = _real_folder(root, relative.parent, member.name, app, create=True) / relative.name
    kind = _kind(path)
    if member.isdir() and kind == stat.S_IFDIR:
        return  # a folder named again, or made before for an entry under it
    if kind is not None:
        raise InstallError(f"app {app}: bundle entry {member.name!r} names a path an earlier entry made")
    if member.isdir():
        os.mkdir(path, 0o755)
    elif member.issym():
        os.symlink(member.linkname, path)
    elif member.islnk():
        os.link(_earlier_file(root, member, app), path, follow_symlinks=False)
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, member.mode & 0o755)
        with tar.extractfile(member) as src, open(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
            os.fchmod(dst.fileno(), member.mode & 0o755)


def _kind(path: Path) -> int | None:
    """The file type of `path` itself (a link is a link), or None if nothing is there."""
    try:
        return stat.S_IFMT(os.lstat(path).st_mode)
    except FileNotFoundError:
        return None


def _real_folder(root: Path, relative: PurePosixPath, name: str, app: str, create: bool) -> Path:
    """`root / relative`, refused unless every part of it is a real folder (made if missing and `create`)."""
    here = root
    for part in relative.parts:
        here = here / part
        kind = _kind(here)
        if kind is None and create:
            os.mkdir(here, 0o755)
        elif kind != stat.S_IFDIR:
            what = {None: "nothing unpacked before it", stat.S_IFLNK: "a symlink"}.get(kind, "not a folder")
            raise InstallError(f"app {app}: bundle entry {name!r} passes through "
                               f"{here.relative_to(root).as_posix()!r}, {what}")
    return here


def _earlier_file(root: Path, member: tarfile.TarInfo, app: str) -> Path:
    """The regular file a hard link names: unpacked before it, reached through real folders only."""
    target = entry_path(member.linkname, app)
    path = _real_folder(root, target.parent, member.name, app, create=False) / target.name
    if not target.parts or _kind(path) != stat.S_IFREG:
        raise InstallError(f"app {app}: bundle hard link {member.name!r} -> {member.linkname!r} does not name "
                           f"a regular file unpacked before it")
    return path


def _resolves_inside(root: Path, link: PurePosixPath) -> bool:
    """Follow `link` as the kernel would, link by link; False if any step leaves `root`, or it loops.

    Parts that do not exist yet are taken as they are written (a link may name a file a
    container creates later); `..` above `root` at any point is leaving it.
    """
    here = list(link.parent.parts)
    pending = [link.name]
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if not here:
                return False
            here.pop()
            continue
        here.append(part)
        path = root.joinpath(*here)
        if path.is_symlink():
            hops += 1
            target = PurePosixPath(os.readlink(path))
            if hops > MAX_LINK_HOPS or target.is_absolute():
                return False
            here.pop()
            pending = list(target.parts) + pending
    return True


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
        path = project / entry_path(name, project.name)
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif file_digest(path) != digest:
            problems.append(f"{name}: content differs")
    return problems
