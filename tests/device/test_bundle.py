"""A bundle unpacks into its project, and nothing in it can reach outside that project."""

import io
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
