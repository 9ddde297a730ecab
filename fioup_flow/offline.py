"""Updates from an offline bundle: a folder (a USB stick, a service laptop's share) instead of the
gateway and the registries.

The folder is laid out as `fioctl targets offline-update` writes it and aktualizr-lite reads it
(`--src-dir`; `src/main.cc` `fillUpdateSource`, `src/api.cc` `CheckInLocal`), minus the OSTree
repository an app-only device has no use for:

    <dir>/tuf/    N.root.json..., timestamp.json, snapshot.json, targets.json, bundle-targets.json
    <dir>/apps/   a composeapp store: blobs/sha256/<hex>, and apps/<app>/<app manifest hex>/uri
                  naming each app it holds (what `composectl pull` leaves, what aktualizr-lite
                  lists to find a Target's content and `composectl pull -l` copies blobs from)

What vouches for it is TUF alone (there is no TLS): `BundleTargets` verifies `bundle-targets.json`
(`tuf.bundle`) against the root chain, then the metadata with the same rules as online
(`tuf.local`), and offers only the Targets the bundle lists. A Target's apps must all be in the
bundle and every blob the plan fetches must be there at its size before the plan is frozen, so
missing content installs nothing; each blob is then copied into the store, which verifies it.

The plan records the folder (`meta.source`), so a `resume` after a power cut reads it again. A
folder gone mid-update fails the fetch with its own exit code and loses nothing. The gateway is
never contacted during an offline update: `NoGateway` stands for it, and every report waits in
the outbox for the next command run online.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from tuf.api.exceptions import DownloadError, RepositoryError

from fioup_flow.config import Config
from fioup_flow.errors import (
    BundleContentDamagedError,
    BundleContentMissingError,
    BundleGoneError,
    BundleMetadataMissingError,
    FetchError,
)
from fioup_flow.gateway import NotSentError
from fioup_flow.graph import Plan
from fioup_flow.metadata import TargetsSource
from fioup_flow.reference import PinnedRef
from fioup_flow.store import BlobStore, digest_hex
from fioup_flow.targets import Target
from fioup_flow.tuf.bundle import BUNDLE_FILE, check_for_device, check_targets, verify_bundle_meta
from fioup_flow.tuf.local import folder_fetch, refresh_from_folder
from fioup_flow.tuf.roots import is_production, shipped_chain
from fioup_flow.tuf.updater import MAX_LENGTH, TARGETS, MetadataMissingError, Updater

log = logging.getLogger(__name__)

SOURCE_KIND = "local"
CHUNK = 1024 * 1024


class OfflineBundle:
    """An offline bundle's folder: where its parts are, and whether it is (still) there."""

    def __init__(self, root: Path):
        self.root = root
        self.tuf = root / "tuf"
        self.apps = root / "apps"
        self.blobs = BundleBlobs(self)

    def record(self) -> dict[str, str]:
        """What the plan keeps of its source, so that a resume reads the same folder."""
        return {"kind": SOURCE_KIND, "path": str(self.root)}

    @classmethod
    def of(cls, plan: Plan) -> OfflineBundle | None:
        """The bundle `plan` was made from, or None for a plan fetching from the registries."""
        source = plan.meta.get("source") or {}
        return cls(Path(source["path"])) if source.get("kind") == SOURCE_KIND else None

    def present(self) -> bool:
        """Whether the bundle is there: a removed stick leaves at most an empty mount point."""
        return self.tuf.is_dir()

    def gone(self) -> BundleGoneError:
        """The error of an update in progress whose folder went: what happened and the ways on."""
        return BundleGoneError(f"the offline bundle at {self.root} is gone: insert it again and run "
                               f"`fioup-flow resume` (or `fioup-flow apply --src-dir` with its new place), "
                               f"or `fioup-flow cancel`")

    def metadata(self) -> bytes:
        """`tuf/bundle-targets.json`, which every bundle fioctl makes since v0.42 carries."""
        if not self.present():
            raise BundleMetadataMissingError(f"{self.root} is not an offline bundle: it has no tuf/ folder "
                                             f"(`fioctl targets offline-update` makes one)")
        data = folder_fetch(self.tuf)(BUNDLE_FILE, MAX_LENGTH[TARGETS])
        if data is None:
            raise BundleMetadataMissingError(f"the offline bundle at {self.root} has no tuf/{BUNDLE_FILE}: "
                                             f"make it again with a current fioctl")
        return data

    def app_uris(self) -> set[str]:
        """The apps the bundle holds: the `uri` file of each `apps/apps/<app>/<hex>/` (aktualizr-lite
        `parseUpdateContent`)."""
        return {path.read_text().strip() for path in self.apps.glob("apps/*/*/uri") if path.is_file()}

    def require_apps(self, target: Target) -> None:
        """Every app of `target` is in the bundle (aktualizr-lite skips a Target whose apps are not)."""
        held = self.app_uris()
        missing = [f"{app.name} ({app.uri})" for app in target.apps if app.uri not in held]
        if missing:
            raise BundleContentMissingError(f"the offline bundle at {self.root} lacks app(s) of {target.name}: "
                                            f"{', '.join(missing)}")

    def require_blobs(self, blobs: dict[str, int], store: BlobStore) -> None:
        """Every blob (digest -> size) the store does not hold yet is in the bundle, at its size."""
        wrong = [f"{digest} ({size} bytes)" for digest, size in sorted(blobs.items())
                 if not store.has(digest, size) and self.blobs.size(digest) != size]
        if wrong:
            shown = ", ".join(wrong[:5]) + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else "")
            raise BundleContentMissingError(f"the offline bundle at {self.root} lacks {len(wrong)} blob(s) of the "
                                            f"update, or holds them at another size: {shown}")


class BundleBlobs:
    """An offline bundle's blobs, read as the registry client reads a registry's: the `BlobSource`
    the fetch task and the tree walk use instead of the registries."""

    def __init__(self, bundle: OfflineBundle):
        self.bundle = bundle
        self.folder = bundle.apps / "blobs" / "sha256"

    def path(self, digest: str) -> Path:
        return self.folder / digest_hex(digest)

    def size(self, digest: str) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def damaged(self, ref: PinnedRef, reason: str) -> BundleContentDamagedError:
        return BundleContentDamagedError(f"{reason}, read from {self.path(ref.digest)} (a damaged offline bundle: "
                                         f"write it again)")

    def manifest(self, ref: PinnedRef, limit: int) -> tuple[bytes, str]:
        with self._open(ref) as f:
            data = self._read(f, ref, limit + 1)
        if len(data) > limit:
            raise FetchError(f"manifest {ref} in the offline bundle is larger than {limit} bytes")
        if hashlib.sha256(data).hexdigest() != digest_hex(ref.digest):
            raise self.damaged(ref, f"manifest {ref} does not match its digest")
        return data, ""

    def open_blob(self, ref: PinnedRef, offset: int = 0) -> Iterator[bytes]:
        f = self._open(ref)
        return self._chunks(f, ref, offset)

    def _chunks(self, f: BinaryIO, ref: PinnedRef, offset: int) -> Iterator[bytes]:
        with f:
            f.seek(offset)
            while chunk := self._read(f, ref, CHUNK):
                yield chunk

    def _open(self, ref: PinnedRef) -> BinaryIO:
        try:
            return open(self.path(ref.digest), "rb")
        except FileNotFoundError:
            if not self.bundle.present():
                raise self.bundle.gone() from None
            raise BundleContentMissingError(f"the offline bundle at {self.bundle.root} has no blob {ref.digest} "
                                            f"(of {ref.host}/{ref.repository})") from None
        except OSError as exc:
            raise self._unreadable(ref, exc) from exc

    def _read(self, f: BinaryIO, ref: PinnedRef, size: int) -> bytes:
        try:
            return f.read(size)
        except OSError as exc:
            raise self._unreadable(ref, exc) from exc

    def _unreadable(self, ref: PinnedRef, exc: OSError) -> FetchError:
        """A read that failed: the stick pulled out mid-read, or a bad medium."""
        if not self.bundle.present():
            return self.bundle.gone()
        return FetchError(f"cannot read {self.path(ref.digest)} of the offline bundle: {exc}")


class BundleTargets(TargetsSource):
    """The device's Targets from an offline bundle: `bundle-targets.json` verified against the root the
    bundle's chain leads to, the metadata refreshed from the bundle (or the device's own when the
    bundle's is older), and only the Targets the bundle lists. Plain mode does not apply: with no
    TLS, the signatures are all that vouch for a bundle."""

    def __init__(self, config: Config, bundle: OfflineBundle):
        super().__init__(config, None, config.tuf_dir / "targets.json")
        self.bundle = bundle
        self.trust = f"TUF, from the offline bundle at {bundle.root} (signatures, versions and expiry verified)"

    def refresh(self) -> list[Target]:
        production = is_production(self.config.client_cert)
        roots_dir = self.config.tuf_roots_path

        def shipped() -> list[bytes]:
            return shipped_chain(roots_dir, production)

        data = self.bundle.metadata()
        try:
            root = Updater(self.config.tuf_dir, folder_fetch(self.bundle.tuf), shipped,
                           origin=str(self.bundle.tuf)).newest_root()
            meta = verify_bundle_meta(data, root, datetime.now(timezone.utc))
            check_for_device(meta, production, self.config.tags)
            if refresh_from_folder(self.config.tuf_dir, self.bundle.tuf, shipped):
                self.trust += "; the bundle's metadata is older than the device's, whose own is used"
        except MetadataMissingError as exc:
            raise BundleMetadataMissingError(f"the offline bundle's TUF metadata is incomplete: {exc}") from exc
        except (RepositoryError, DownloadError, OSError, ValueError) as exc:
            raise self._failed(exc) from exc
        check_targets(meta, self._held())
        return [t for t in self.trusted_targets() if t.name in meta.targets]


class NoGateway:
    """The gateway during an offline update: never contacted. Every report fails at once and stays
    in the outbox, to go out with the next command run online."""

    def __init__(self, bundle: OfflineBundle):
        self.bundle = bundle

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        raise NotSentError(f"{method} {path}: not sent, an update from the offline bundle at {self.bundle.root} "
                           f"contacts no gateway (reports wait in the outbox)")

    def get_json(self, path: str) -> Any:
        return self.request("GET", path)

    def send(self, method: str, path: str, payload: Any) -> None:
        self.request(method, path)
