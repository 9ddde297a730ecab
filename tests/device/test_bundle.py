"""A bundle unpacks into its project, and nothing in it can reach outside that project."""

import io
import os
import tarfile
from pathlib import Path

import pytest

from fioup_flow.bundle import file_digest, index_mismatches, unpack
from fioup_flow.errors import InstallError


def bundle(*members: tuple[tarfile.TarInfo, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    buf.seek(0)
    return buf


def entry(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info


def test_files_folders_and_inner_links_are_unpacked(tmp_path: Path) -> None:
    dest = tmp_path / "web"
    unpack(bundle((entry("docker-compose.yml"), b"services: {}\n"), (entry("www", tarfile.DIRTYPE), b""),
                  (entry("www/index.html"), b"hi"), (entry("www/home.html", tarfile.SYMTYPE, "index.html"), b"")),
           dest, "web")
    assert (dest / "www/home.html").read_text() == "hi"
    index = {"docker-compose.yml": file_digest(dest / "docker-compose.yml"), "www/index.html": file_digest(dest / "www/index.html")}
    assert index_mismatches(dest, index) == []
    (dest / "www/index.html").write_text("tampered")
    assert index_mismatches(dest, index) == ["www/index.html: content differs"]


@pytest.mark.parametrize("hostile", [
    entry("../escape"),
    entry("/etc/passwd"),
    entry("a/../../escape"),
    entry("link", tarfile.SYMTYPE, "../../etc/passwd"),
    entry("link", tarfile.SYMTYPE, "/etc/passwd"),
    entry("hard", tarfile.LNKTYPE, "../outside"),
    entry("dev", tarfile.CHRTYPE),
    entry("fifo", tarfile.FIFOTYPE),
])
def test_an_entry_that_could_escape_or_is_special_is_refused_and_nothing_stays(tmp_path: Path, hostile) -> None:
    dest = tmp_path / "app"
    with pytest.raises(InstallError):
        unpack(bundle((entry("docker-compose.yml"), b"services: {}\n"), (hostile, b"x")), dest, "app")
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_truncated_bundle_is_refused(tmp_path: Path) -> None:
    data = bundle((entry("docker-compose.yml"), b"x" * 100_000)).getvalue()
    with pytest.raises(InstallError, match="cannot be unpacked"):
        unpack(io.BytesIO(data[: len(data) // 2]), tmp_path / "app", "app")


def snapshot(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """Every path under `root` (links not followed): its kind, link count and content or link text."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            found[path.relative_to(root).as_posix()] = ("link", st.st_nlink, os.readlink(path))
        elif path.is_dir():
            found[path.relative_to(root).as_posix()] = ("dir", 0, "")
        else:
            found[path.relative_to(root).as_posix()] = ("file", st.st_nlink, path.read_bytes())
    return found


def link(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.SYMTYPE, target), b""


def hard(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.LNKTYPE, target), b""


def folder(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.DIRTYPE), b""


def file(name: str, data: bytes = b"written\n") -> tuple[tarfile.TarInfo, bytes]:
    return entry(name), data


# Each entry of these bundles looks harmless by its own text (no absolute path, no `..` that
# leaves the project when read alone); together they reach outside through links unpacked before.
@pytest.mark.parametrize("members", [
    pytest.param([link("a", "."), link("a/b", ".."), file("a/b/c/x")], id="file-through-a-chain-of-links"),
    pytest.param([link("a", "."), link("a/b", ".."), file("a/b/victim", b"overwritten\n")],
                 id="file-over-an-outside-file-through-links"),
    pytest.param([link("a", "."), link("up", "a/.."), file("up/escaped")], id="file-under-a-link-to-the-parent"),
    pytest.param([link("a", "."), link("a/b", ".."), hard("h", "a/b/victim")], id="hard-link-through-links"),
    pytest.param([link("a", "."), link("s", "a/../victim"), hard("h", "s")], id="hard-link-to-a-link-leading-out"),
    pytest.param([link("a", "."), link("b", "a/..")], id="link-resolving-outside-through-a-link"),
    pytest.param([link("b", "a/.."), link("a", ".")], id="link-made-to-leave-by-a-later-link"),
    pytest.param([link("a", "b"), link("b", "/etc")], id="link-to-a-link-with-an-absolute-target"),
    pytest.param([link("loop", "loop")], id="link-loop"),
    pytest.param([folder("sub"), link("d", "sub"), file("d/x")], id="file-under-a-link-to-an-inner-folder"),
    pytest.param([folder("d"), link("d", "..")], id="folder-replaced-by-a-link"),
    pytest.param([file("f"), link("f", "../victim")], id="file-replaced-by-a-link"),
    pytest.param([file("f"), file("f", b"again")], id="file-written-twice"),
    pytest.param([file("f"), folder("f/x")], id="folder-under-a-file"),
    pytest.param([hard("h", "missing")], id="hard-link-to-nothing-unpacked-before"),
    pytest.param([folder("sub"), hard("h", "sub")], id="hard-link-to-a-folder"),
])
def test_links_unpacked_before_never_carry_a_later_entry_out_of_the_project(tmp_path: Path, members) -> None:
    root = tmp_path / "compose-apps"  # the folder the project is unpacked in, and its neighbour
    root.mkdir()
    (root / "victim").write_bytes(b"outside the project\n")
    before = snapshot(tmp_path)
    with pytest.raises(InstallError) as refused:
        unpack(bundle((entry("docker-compose.yml"), b"services: {}\n"), *members), root / "app", "app")
    assert refused.value.exit_code == 60
    assert snapshot(tmp_path) == before, "nothing outside the project changed, and nothing of it stays"


def test_links_that_stay_inside_and_hard_links_to_files_unpacked_before_are_kept(tmp_path: Path) -> None:
    dest = tmp_path / "app"
    unpack(bundle((entry("docker-compose.yml"), b"services: {}\n"), folder("www"), file("www/index.html", b"hi"),
                  link("here", "."), link("site", "www"), link("site-home", "site/index.html"),
                  link("later", "not-yet/x"), folder("not-yet"), hard("www/copy.html", "www/index.html"),
                  folder("www")),
           dest, "app")
    assert (dest / "site-home").read_text() == "hi"
    assert os.readlink(dest / "here") == "."
    assert (dest / "www/copy.html").stat().st_ino == (dest / "www/index.html").stat().st_ino
