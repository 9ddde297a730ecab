"""TUF metadata from a folder: an offline bundle's `tuf/`, verified with the same rules as online.

The source is aktualizr-lite's `LocalRepoSource` (`src/tuf/localreposource.cc`): `<folder>/N.root.json`,
`timestamp.json`, `snapshot.json`, `targets.json`, a file that is not there being "not found". The
refresh is the gateway's (`Updater`: root chain, signatures, versions, expiry), and the one rule
offline updates add is aktualizr-lite's (`src/api.cc`, `updateMeta`): when the bundle's metadata
is older than the device's (a rollback, refused from a gateway), the device's own metadata is
verified again as it stands and used instead; any other failure is a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from tuf.api.exceptions import DownloadLengthMismatchError

from fioup_flow.tuf.trusted_set import RollbackError
from fioup_flow.tuf.updater import Fetch, Updater

log = logging.getLogger(__name__)


def folder_fetch(folder: Path) -> Fetch:
    """Read `<folder>/<name>`, at most `max_length` bytes; None when there is no such file."""
    def fetch(name: str, max_length: int) -> bytes | None:
        try:
            with open(folder / name, "rb") as f:
                data = f.read(max_length + 1)
        except FileNotFoundError:
            return None
        if len(data) > max_length:
            raise DownloadLengthMismatchError(f"{folder / name} is longer than {max_length} bytes")
        return data
    return fetch


def refresh_from_folder(metadata_dir: Path, folder: Path, shipped_roots: Callable[[], list[bytes]]) -> bool:
    """Refresh the device's metadata in `metadata_dir` from `folder`; True when the folder's was older
    than the device's, so that the device's own (verified again, expiry included) stands."""
    try:
        Updater(metadata_dir, folder_fetch(folder), shipped_roots, origin=str(folder)).refresh()
        return False
    except RollbackError as exc:
        log.warning("the TUF metadata in %s is older than the device's (%s): the device's own is used", folder, exc)
    Updater(metadata_dir, folder_fetch(metadata_dir), shipped_roots, origin=str(metadata_dir)).refresh()
    return True
