"""Bad Targets: the Targets that failed on this device for a reason of their own, remembered durably.

An update that fails because of its Target (a blob that does not match its digest, a bundle
or compose file that cannot be installed, an app that does not start or does not stay up
through its health window) would fail the same way every time: the Target is marked bad, and
is not chosen as "the latest" again; a newer Target is. `apply VERSION` of a bad Target is
refused (`BadTargetError`) unless `--force` is given, and a forced update that completes clears
the mark. A failure that is not the Target's own (the gateway or a registry out of reach, a full
disk, the engine refusing to load an image) is transient: it marks nothing, and the update is
tried again. This mirrors aktualizr-lite, which records a Target whose install failed as
"failing" (`saveInstalledVersion(kNone)` in `src/liteclient.cc`) and skips such "known" Targets
unless told to allow bad ones (`allow_bad_target`, `src/aklite_client_ext.cc` and
`src/helpers.cc`), and does not mark image-load failures (retried at the next cycle).

The marks live in the checkpoint store (its own key), so that the failed update's end, the mark
and the rollback plan are written in one transaction (`CheckpointStore.hand_over`). Deleting the
store (`fioup-flow cancel --discard-state`) forgets them.

API for the callers (the agent, the daemon, `status`):

    bad = BadTargets(checkpoint_store)
    bad.mark(target, reason, plan_id); bad.is_bad(name); bad.reason(name); bad.clear(name); bad.all()
    is_permanent(error)        # a failed run's error: True marks its Target bad
    choose(targets, version, bad, force=..., current=...)   # the Target to update to
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from fioup_flow.checkpoint import CheckpointStore
from fioup_flow.errors import (
    BadTargetError,
    InstallError,
    NoMatchingTargetError,
    NoSpaceError,
    StartError,
    exit_code_of,
)
from fioup_flow.store import DigestMismatchError
from fioup_flow.targets import Target, select_target
from fioup_flow.task import TransientError

# The failures that are the Target's own. A TransientError (a network blip that outlived its retry
# budget, a start refused for a port someone else holds, an image the engine would not load) is
# never one of them, whatever else it is, nor is a full disk.
PERMANENT = (DigestMismatchError, InstallError, StartError)


def is_permanent(error: BaseException) -> bool:
    """Whether a failed run's `error` says its Target is bad (it would fail the same way again)."""
    if isinstance(error, TransientError) or exit_code_of(error) == NoSpaceError.exit_code:
        return False
    return isinstance(error, PERMANENT)


@dataclass(frozen=True)
class BadTarget:
    """A Target marked bad: why, when, and the update (plan id) that failed with it."""

    name: str
    version: int
    reason: str
    plan_id: str
    when: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def entry(target: Target, reason: str, plan_id: str) -> dict[str, Any]:
    """The stored form of a bad Target's mark (what `CheckpointStore.hand_over` records)."""
    return BadTarget(target.name, target.version, reason, plan_id, time.time()).as_json()


class BadTargets:
    """The device's bad Targets, read and written in the checkpoint store."""

    def __init__(self, store: CheckpointStore):
        self.store = store

    def mark(self, target: Target, reason: str, plan_id: str) -> BadTarget:
        record = entry(target, reason, plan_id)
        self.store.mark_bad(record)
        return BadTarget(**record)

    def is_bad(self, name: str) -> bool:
        return name in self.store.bad_targets()

    def reason(self, name: str) -> str | None:
        found = self.store.bad_targets().get(name)
        return found["reason"] if found else None

    def clear(self, name: str) -> None:
        self.store.clear_bad(name)

    def all(self) -> list[BadTarget]:
        """Every bad Target, newest mark first."""
        return sorted((BadTarget(**e) for e in self.store.bad_targets().values()), key=lambda b: -b.when)


def choose(targets: list[Target], version: int | None, bad: BadTargets, *, force: bool = False,
           current: str | None = None) -> Target:
    """The Target to update to: Target `version`, or the latest one that is not bad.

    The Target the device runs is never passed over, even if marked (a forced update to it
    completed, and a cut came before the mark was cleared). A bad `version` is refused unless
    `force`; with every Target bad, the error says so.
    """
    marks = {b.name: b for b in bad.all()}
    if version is not None:
        chosen = select_target(targets, version)
        mark = marks.get(chosen.name)
        if mark and not force and chosen.name != current:
            raise BadTargetError(
                f"Target {chosen.name} (version {chosen.version}) failed on this device and is marked bad: "
                f"{mark.reason}. `fioup-flow apply {chosen.version} --force` tries it again")
        return chosen
    good = [t for t in targets if t.name not in marks or t.name == current]
    try:
        return select_target(good)
    except NoMatchingTargetError:
        if len(good) == len(targets):
            raise
        raise NoMatchingTargetError(
            "no Target for this device that is not marked bad (see `fioup-flow status`; "
            "`fioup-flow apply VERSION --force` tries a bad one again)") from None
