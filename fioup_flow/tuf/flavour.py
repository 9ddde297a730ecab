"""The FoundriesFactory TUF flavour (ota-tuf style), read into python-tuf's data model.

A real factory's metadata is not the TUF specification's format (fioctl
`client/foundries_tuf_root.go` and `subcommands/keys/tuf_crypto.go`; aktualizr
`uptane/root.cc`, `crypto/crypto.cc`): `_type` is capitalised (`Root`, `Targets`, ...) and
there is no `spec_version`; a key is `{"keytype": "ED25519" | "RSA", "keyval": {"public": ...}}`
with no `scheme` (ED25519: 64 hex characters, the raw key; RSA: a PEM SubjectPublicKeyInfo,
signing with PSS over SHA-256); a signature is `{"keyid", "method", "sig": <base64>}`; roots
carry fields of their own (`x-changelog`, `targets-signatures`).

python-tuf's `Metadata` cannot parse that, and its objects re-serialised would not be the
bytes that were signed. So this module reads the JSON itself and hands python-tuf and
securesystemslib what they check: keys as `SSlibKey` (`"ed25519"/"ed25519"` with the hex key,
`"rsa"/"rsassa-pss-sha256"` with the PEM), signatures turned from base64 to hex, and payloads
as `Root`/`Timestamp`/`Snapshot`/`Targets` objects (unknown fields kept) for
`Root.verify_delegate`, `MetaFile.verify_length_and_hashes` and `Signed.is_expired`. The signed
bytes are the `signed` object as served, unknown fields included, as JSON with sorted keys, no
whitespace and ordinary escaping (`canonical_bytes`): not OLPC canonical JSON, which leaves a
PEM's newlines raw. No cryptography is done here.

Leniency follows aktualizr: key types, role names, `_type` and signature methods are read
case-insensitively; the methods it knows are `ed25519`, `rsassa-pss-sha256` and the older
`rsassa-pss`, and the key's type, not the method, decides how a signature is checked. A
document with two signatures by one key id, an unknown method or key type, or JSON that can be
read two ways (a repeated name, NaN) is refused whole.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

from securesystemslib.signer import Signature, SSlibKey
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import MetaFile, Role, Root, Snapshot, TargetFile, Targets, Timestamp

SignedT = TypeVar("SignedT", Root, Timestamp, Snapshot, Targets)

# keytype as the flavour writes it -> (securesystemslib keytype, scheme)
KEY_TYPES = {"ED25519": ("ed25519", "ed25519"), "RSA": ("rsa", "rsassa-pss-sha256")}
METHODS = {"ed25519", "rsassa-pss-sha256", "rsassa-pss"}
# python-tuf role type -> `_type` as the flavour writes it
TYPE_NAMES = {Root.type: "Root", Timestamp.type: "Timestamp", Snapshot.type: "Snapshot", Targets.type: "Targets"}
COMMON_FIELDS = ("_type", "version", "expires")


class FlavourError(RepositoryError):
    """Metadata that is not this flavour, or not one unambiguous document."""


def canonical_bytes(obj: Any) -> bytes:
    """The bytes a signature covers: sorted keys, no whitespace, ordinary escaping, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_json(data: bytes) -> Any:
    """JSON read one way only: a repeated name or a NaN/Infinity is refused, not guessed at."""
    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [name for name, _ in pairs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise FlavourError(f"a JSON object repeats a name ({', '.join(repeated)})")
        return dict(pairs)

    def no_constant(name: str) -> Any:
        raise FlavourError(f"JSON constant {name} is not allowed")

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=no_repeats, parse_constant=no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FlavourError(f"not JSON: {exc}") from exc


@dataclass(frozen=True)
class Envelope(Generic[SignedT]):
    """One metadata document: its payload as python-tuf reads it, the bytes that were signed,
    and the signatures by key id."""

    signed: SignedT
    payload: bytes
    signatures: dict[str, Signature]


def load(role: type[SignedT], data: bytes) -> Envelope[SignedT]:
    """Parse `data` as a `role` document of this flavour (nothing is verified here)."""
    signed, payload, signatures = envelope(data)
    kind = _field(signed, "_type", str)
    if kind.lower() != role.type:
        raise FlavourError(f"expected {TYPE_NAMES[role.type]} metadata, got {kind!r}")
    try:
        parsed = _PARSERS[role.type](signed)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise FlavourError(f"malformed {TYPE_NAMES[role.type]} metadata: {exc}") from exc
    return Envelope(parsed, payload, signatures)


def envelope(data: bytes) -> tuple[dict[str, Any], bytes, dict[str, Signature]]:
    """Any signed document of this flavour, a role's or not (an offline bundle's `bundle-targets.json`):
    its `signed` object, the bytes the signatures cover, and the signatures by key id. Nothing is
    verified here."""
    document = parse_json(data)
    if not isinstance(document, dict):
        raise FlavourError("metadata must be a JSON object")
    signed = _field(document, "signed", dict)
    return signed, canonical_bytes(signed), _signatures(_field(document, "signatures", list))


def verify(delegator: Root, role: str, envelope: Envelope) -> None:
    """`envelope` carries valid signatures of a threshold of the keys `delegator` names for `role`
    (python-tuf's `verify_delegate`: a key id outside the role or unknown to the root counts for
    nothing). Raises UnsignedMetadataError."""
    delegator.verify_delegate(role, envelope.payload, envelope.signatures)


def _field(obj: dict, name: str, kind: type) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FlavourError(f"field {name!r} must be a {kind.__name__}, got {value!r}")
    return value


def _signatures(entries: list) -> dict[str, Signature]:
    """`[{"keyid", "method", "sig": base64}]` -> {keyid: Signature with the signature in hex}."""
    signatures: dict[str, Signature] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise FlavourError("a signature must be a JSON object")
        keyid, method, sig = (_field(entry, name, str) for name in ("keyid", "method", "sig"))
        if method.lower() not in METHODS:
            raise FlavourError(f"unsupported signature method {method!r}")
        if keyid in signatures:
            raise FlavourError(f"two signatures by key {keyid}")
        try:
            raw = base64.b64decode(sig, validate=True)
        except binascii.Error as exc:
            raise FlavourError(f"signature by {keyid} is not base64") from exc
        signatures[keyid] = Signature(keyid, raw.hex())
    return signatures


def parse_expires(value: Any) -> datetime:
    """An `expires` value, e.g. `2026-01-31T12:00:00Z` (fractions of a second allowed), in UTC."""
    if not isinstance(value, str) or not value.endswith("Z"):
        raise FlavourError(f"expires must be a UTC time ending in Z, got {value!r}")
    try:
        return datetime.fromisoformat(value[:-1]).replace(tzinfo=timezone.utc)
    except ValueError as exc:
        raise FlavourError(f"expires {value!r} is not a time") from exc


def _common(signed: dict) -> dict[str, Any]:
    """The arguments every python-tuf `Signed` takes; spec_version is python-tuf's own."""
    return {"version": _field(signed, "version", int), "spec_version": None,
            "expires": parse_expires(signed.get("expires"))}


def _extra(signed: dict, known: tuple[str, ...]) -> dict[str, Any]:
    """Fields this flavour does not define (x-changelog, targets-signatures, ...), kept as they are."""
    return {k: v for k, v in signed.items() if k not in COMMON_FIELDS + known}


def key_from_flavour(keyid: str, key: dict) -> SSlibKey:
    """A root's key entry as a securesystemslib key (the type decides the scheme)."""
    keytype = _field(key, "keytype", str).upper()
    if keytype not in KEY_TYPES:
        raise FlavourError(f"key {keyid}: unsupported key type {keytype!r}")
    public = _field(_field(key, "keyval", dict), "public", str)
    sslib_type, scheme = KEY_TYPES[keytype]
    return SSlibKey(keyid, sslib_type, scheme, {"public": public})


def _root(signed: dict) -> Root:
    keys = {keyid: key_from_flavour(keyid, key) for keyid, key in _field(signed, "keys", dict).items()}
    roles = {name.lower(): Role(_field(role, "keyids", list), _field(role, "threshold", int))
             for name, role in _field(signed, "roles", dict).items()}
    return Root(**_common(signed), keys=keys, roles=roles,
                consistent_snapshot=bool(signed.get("consistent_snapshot", False)),
                unrecognized_fields=_extra(signed, ("keys", "roles", "consistent_snapshot")))


def meta_file(info: dict) -> MetaFile:
    """A `meta` entry: version, length and hashes of a file the role vouches for."""
    return MetaFile(version=_field(info, "version", int), length=_field(info, "length", int),
                    hashes=_field(info, "hashes", dict),
                    unrecognized_fields=_extra(info, ("version", "length", "hashes")))


def _timestamp(signed: dict) -> Timestamp:
    meta = _field(signed, "meta", dict)
    return Timestamp(**_common(signed), snapshot_meta=meta_file(_field(meta, "snapshot.json", dict)),
                     unrecognized_fields=_extra(signed, ("meta",)))


def _snapshot(signed: dict) -> Snapshot:
    meta = {name: meta_file(info) for name, info in _field(signed, "meta", dict).items()}
    return Snapshot(**_common(signed), meta=meta, unrecognized_fields=_extra(signed, ("meta",)))


def _targets(signed: dict) -> Targets:
    files = {name: TargetFile(length=_field(info, "length", int), hashes=_field(info, "hashes", dict), path=name,
                              unrecognized_fields={k: v for k, v in info.items() if k not in ("length", "hashes")})
             for name, info in _field(signed, "targets", dict).items()}
    return Targets(**_common(signed), targets=files, unrecognized_fields=_extra(signed, ("targets",)))


_PARSERS = {Root.type: _root, Timestamp.type: _timestamp, Snapshot.type: _snapshot, Targets.type: _targets}
