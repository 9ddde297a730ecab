"""The roots the OS image ships, and which of its two chains this device follows.

A LmP image ships every root of the factory at build time, `ci/N.root.json` and
`prod/N.root.json` under `/usr/lib/sota/tuf` (meta-lmp `classes/lmp.bbclass`, ci-scripts
`lmp/fetch_root_meta.py`). aktualizr-lite (`src/liteclient.cc`) imports the chain from `prod/`
when the device certificate's businessCategory (OID 2.5.4.15) is `production`, else from
`ci/`, walking it from its first root while the next version is there and tolerating roots
that expired since the image was built; the gateway tells production devices apart by the
same rule (dg-satellite `server/gateway/middleware.go`). Unlike aktualizr-lite, no root is
ever fetched on trust from the gateway when the image has none: that is an error.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from fioup_flow.errors import MetadataUpdateError

PRODUCTION = "production"
ROOT_FILE = re.compile(r"^([1-9][0-9]*)\.root\.json$")


def is_production(client_cert: Path) -> bool:
    """Whether the device certificate marks a production device (businessCategory=production)."""
    cert = x509.load_pem_x509_certificate(client_cert.read_bytes())
    return any(a.value == PRODUCTION for a in cert.subject.get_attributes_for_oid(NameOID.BUSINESS_CATEGORY))


def chain_folder(roots_dir: Path, production: bool) -> Path:
    return roots_dir / ("prod" if production else "ci")


def shipped_chain(roots_dir: Path, production: bool) -> list[bytes]:
    """The shipped roots this device follows, from the first one while the next version is there."""
    folder = chain_folder(roots_dir, production)
    versions = sorted(int(m[1]) for p in (folder.iterdir() if folder.is_dir() else ())
                      if (m := ROOT_FILE.match(p.name)))
    if not versions:
        kind = "a production" if production else "a CI"
        raise MetadataUpdateError(
            f"no TUF root to start from: {folder} holds no N.root.json (the device certificate makes this "
            f"{kind} device; the roots folder is storage.uptane_metadata_path)")
    chain = [versions[0]]
    while chain[-1] + 1 in versions:
        chain.append(chain[-1] + 1)
    return [(folder / f"{v}.root.json").read_bytes() for v in chain]
