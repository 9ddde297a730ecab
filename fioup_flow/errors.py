"""The errors fioup-flow reports, each with the exit code a caller can act on.

The codes from 10 to 70 are fioup's (see its `cmd/fioup/error.go`), so that scripts written for
fioup keep working. The codes below 10 are ours, for failures fioup has no code for; 110 and 111
(rolled back, rollback failed) follow aktualizr-lite's CLI, since fioup does not roll back. 80 to
89 are an offline bundle's (`apply --src-dir`), their last digit aktualizr-lite's code for the same
failure where it has one (`include/aktualizr-lite/cli/cli.h`: 8 no update content, 14 TUF
metadata not found, 15 invalid bundle metadata), since fioup has no offline updates.
"""

from __future__ import annotations

import errno


class FioupFlowError(Exception):
    """Base of every error that the CLI turns into a message and an exit code."""

    exit_code: int = 1


class UsageError(FioupFlowError):
    """The command line or an argument is wrong."""

    exit_code = 2


class NotConfiguredError(FioupFlowError):
    """No usable `sota.toml` (the device is not registered, or `tls.server` is missing)."""

    exit_code = 3


class LockedError(FioupFlowError):
    """Another fioup-flow process holds the single-instance lock."""

    exit_code = 4


class CheckpointStoreError(FioupFlowError):
    """The checkpoint store cannot be read; resuming from it could do the wrong thing."""

    exit_code = 5


class RegistrationError(FioupFlowError):
    """Registration failed, or the device is registered already and `--force` was not given."""

    exit_code = 6


class EngineUnavailableError(FioupFlowError):
    """The Docker engine does not answer (not running, or DOCKER_HOST points elsewhere)."""

    exit_code = 7


class EngineUnsupportedError(FioupFlowError):
    """The engine or Docker Compose cannot run fioup-flow's updates: an image store whose image IDs
    are not config digests, or no Compose v2 at or above the version whose flags fioup-flow uses."""

    exit_code = 8


class BadTargetError(FioupFlowError):
    """The Target asked for failed on this device before and is marked bad; `--force` tries it again."""

    exit_code = 9


class InvalidStateError(FioupFlowError):
    """The action is not allowed in the current update state."""

    exit_code = 10


class MetadataUpdateError(FioupFlowError):
    """TUF metadata could not be refreshed or did not verify."""

    exit_code = 20


class NoMatchingTargetError(FioupFlowError):
    """No Target matches this device (hardware ID, tags)."""

    exit_code = 21


class TargetNotFoundError(FioupFlowError):
    """The requested Target version does not exist for this device."""

    exit_code = 22


class InvalidOngoingUpdateError(FioupFlowError):
    """The update in progress cannot be continued: its Target was withdrawn or changed (it is
    cancelled then), or another plan would replace it."""

    exit_code = 23


class NoUpdateInProgressError(FioupFlowError):
    """An action that needs an update in progress found none."""

    exit_code = 24


class FetchError(FioupFlowError):
    """Fetching a blob failed (network, registry, digest mismatch)."""

    exit_code = 40


class NoSpaceError(FetchError):
    """The update does not fit on the disk within `pacman.storage_watermark`, or the disk filled up."""

    exit_code = 41


class BundleGoneError(FetchError):
    """The offline bundle an update in progress reads its blobs from is not there any more (the
    USB stick was removed): nothing is lost, the update waits for it."""

    exit_code = 80


class BundleMetadataMissingError(MetadataUpdateError):
    """The offline bundle lacks TUF metadata: its `tuf/` folder, `timestamp.json`, `snapshot.json`,
    `targets.json` or `bundle-targets.json` (aktualizr-lite's 14)."""

    exit_code = 84


class BundleMetadataError(MetadataUpdateError):
    """The offline bundle's `bundle-targets.json` is not valid: malformed, not signed by a threshold
    of the Targets role's keys, expired, for another type of device or another tag, or listing a
    Target the verified metadata does not hold (aktualizr-lite's 15)."""

    exit_code = 85


class BundleContentMissingError(FetchError):
    """The offline bundle lacks an app of the Target, or a blob of one (aktualizr-lite's 8)."""

    exit_code = 88


class BundleContentDamagedError(FetchError):
    """A blob of the offline bundle does not match its digest: the medium is damaged, not the Target
    (which is not marked bad, unlike a registry's blob that does not match); once the bundle holds
    good bytes, the update goes on."""

    exit_code = 89


class StopError(FioupFlowError):
    """Stopping an app failed."""

    exit_code = 50


class InstallError(FioupFlowError):
    """Installing an app (compose project, images) failed."""

    exit_code = 60


class StartError(FioupFlowError):
    """Starting an app failed, or its services did not come up in time."""

    exit_code = 70


class RolledBackError(FioupFlowError):
    """The update failed for a reason of its Target's own and was rolled back: the device runs its
    previous Target again, and the failed one is marked bad (aktualizr-lite's `InstallRollbackOk`)."""

    exit_code = 110


class RollbackFailedError(FioupFlowError):
    """The update failed, and so did the rollback that followed it: the rollback stays in progress and
    `resume` tries it again (aktualizr-lite's `InstallRollbackFailed` is 130, which here is SIGINT's)."""

    exit_code = 111


def exit_code_of(exc: BaseException) -> int:
    """The exit code for `exc`: its own for our errors, 41 for a full disk wherever it struck
    (installing a project, writing metadata), 1 for anything else."""
    if isinstance(exc, FioupFlowError):
        return exc.exit_code
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError.exit_code
    return 1
