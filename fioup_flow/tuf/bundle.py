"""An offline bundle's `bundle-targets.json`: what the bundle is for, signed by the Targets role.

fioctl writes it beside the TUF metadata of an offline bundle (`subcommands/targets/offline-update.go`,
`ouBundleTufMeta`; `fioctl targets offline-update sign` adds the signatures of offline targets
keys): a document of this flavour whose `signed` carries `_type`, `version`, its own `expires`
and `x-fio-offline-bundle` = {`type`: "ci" | "prod", `tag`, `targets`: [Target names]}.

The checks are aktualizr-lite's (`src/api.cc`: `checkAndGetBundleMeta`, `checkBundleType`,
`checkBundleTag`, `getTrustedBundleTargets`), made against the newest root the device reaches
through the bundle's root chain: every signature is by a key the root names for the Targets role
and verifies, at least the role's threshold of them; `expires` has not passed; the type is this
device's (CI or production) and the tag one of its tags. Two rules are stricter than
aktualizr-lite's: a type other than "ci" or "prod" is refused (aktualizr-lite lets it pass), and
every Target listed must be in the verified targets (aktualizr-lite keeps those that are and
drops the others). Signatures are checked by python-tuf over the canonical bytes (`flavour`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tuf.api.metadata import Root, Targets

from fioup_flow.errors import BundleMetadataError
from fioup_flow.tuf.flavour import FlavourError, envelope, parse_expires

BUNDLE_FILE = "bundle-targets.json"
BUNDLE_FIELD = "x-fio-offline-bundle"
TYPES = {"ci": False, "prod": True}  # the bundle's type -> for production devices


@dataclass(frozen=True)
class BundleMeta:
    type: str
    tag: str
    targets: tuple[str, ...]
    expires: datetime


def verify_bundle_meta(data: bytes, root: Root, now: datetime) -> BundleMeta:
    """`bundle-targets.json` read and verified against `root`'s Targets role; BundleMetadataError if not."""
    try:
        signed, payload, signatures = envelope(data)
        meta = _read(signed)
    except FlavourError as exc:
        raise BundleMetadataError(f"{BUNDLE_FILE} is not valid: {exc}") from exc
    role = root.roles[Targets.type]
    unknown = sorted(set(signatures) - set(role.keyids))
    if unknown:
        raise BundleMetadataError(f"{BUNDLE_FILE} is signed with a key the Targets role does not name: "
                                  f"{', '.join(unknown)}")
    result = root.get_verification_result(Targets.type, payload, signatures)
    invalid = sorted(set(signatures) - set(result.signed))
    if invalid:
        raise BundleMetadataError(f"{BUNDLE_FILE} carries a signature that does not verify, by key "
                                  f"{', '.join(invalid)}")
    if not result.verified:
        raise BundleMetadataError(f"{BUNDLE_FILE} has {len(result.signed)} valid signature(s) of the Targets "
                                  f"role's keys; its threshold is {result.threshold}")
    if meta.expires <= now:
        raise BundleMetadataError(f"the offline bundle expired at {meta.expires:%Y-%m-%d %H:%M:%S} UTC "
                                  f"({BUNDLE_FILE}); make a new one")
    return meta


def check_for_device(meta: BundleMeta, production: bool, tags: tuple[str, ...]) -> None:
    """The bundle is for this device's type (CI or production) and one of its tags (if it has any)."""
    device_type = "production" if production else "CI"
    if TYPES[meta.type] != production:
        raise BundleMetadataError(f"the offline bundle is of type {meta.type!r}, this is a {device_type} device")
    if tags and meta.tag not in tags:
        raise BundleMetadataError(f"the offline bundle is for tag {meta.tag!r}, this device follows "
                                  f"{', '.join(tags)}")


def check_targets(meta: BundleMeta, targets: Targets) -> None:
    """Every Target the bundle lists is one the verified targets metadata holds."""
    unknown = [name for name in meta.targets if name not in targets.targets]
    if unknown:
        raise BundleMetadataError(f"{BUNDLE_FILE} lists {', '.join(unknown)}, which the verified targets "
                                  f"metadata (version {targets.version}) does not hold")


def _read(signed: dict) -> BundleMeta:
    """The fields the checks need, of the types they must have (FlavourError otherwise)."""
    bundle = signed.get(BUNDLE_FIELD)
    if not isinstance(bundle, dict):
        raise FlavourError(f"{BUNDLE_FIELD} must be a JSON object")
    kind, tag, targets = bundle.get("type"), bundle.get("tag"), bundle.get("targets")
    if kind not in TYPES:
        raise FlavourError(f"{BUNDLE_FIELD}.type must be one of {', '.join(TYPES)}, got {kind!r}")
    if not isinstance(tag, str) or not tag:
        raise FlavourError(f"{BUNDLE_FIELD}.tag must be a tag, got {tag!r}")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise FlavourError(f"{BUNDLE_FIELD}.targets must list Target names, got {targets!r}")
    return BundleMeta(kind, tag, tuple(targets), parse_expires(signed.get("expires")))
