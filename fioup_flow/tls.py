"""HTTP sessions that trust exactly the CAs the device means to trust, whatever the environment says.

Two kinds of trust, as on a FoundriesFactory device:
- the Device Gateway is pinned to the factory's CA (`root.crt`): `PinnedCASession`;
- registries (the factory's hub, third-party registries) and the storage their blobs redirect
  to use public CAs, so their sessions trust the system's CA store plus the factory's CA:
  `SystemTrustSession`. "The system's store" is what OpenSSL's default verify paths name
  (`ssl.get_default_verify_paths()`, so `SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured), as a
  Go program like fioup trusts the system roots; never certifi's bundle, which requests would
  otherwise load for `verify=True`.

requests lets `$REQUESTS_CA_BUNDLE` (set on many systems) override a session's `verify`, which
would make the device trust other CAs than these, or fail to verify the factory's servers at
all; both sessions ignore it.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from fioup_flow import __version__

USER_AGENT = f"fioup-flow/{__version__}"


class _FixedTrustSession(requests.Session):
    """A session whose `verify` is decided here once, never by the environment."""

    def __init__(self, verify: str | bool):
        super().__init__()
        self.verify = verify
        self.headers["User-Agent"] = USER_AGENT

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # noqa: D102 - requests' hook
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None or verify is True:
            settings["verify"] = self.verify
        return settings


class PinnedCASession(_FixedTrustSession):
    """Trusts `ca_cert` alone (the Device Gateway, or a registration service given `--ca`)."""

    def __init__(self, ca_cert: Path):
        super().__init__(str(ca_cert))


class _ContextAdapter(HTTPAdapter):
    """An adapter whose connections verify with one SSLContext and nothing added to it."""

    def __init__(self, context: ssl.SSLContext):
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:  # noqa: D102 - requests' hook
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn, url, verify, cert) -> None:  # noqa: D102 - requests' hook
        super().cert_verify(conn, url, verify, cert)
        # requests names certifi's bundle for verify=True; the context already holds every CA.
        conn.ca_certs = conn.ca_cert_dir = None


def system_trust_context(extra_cas: Iterable[Path] = ()) -> ssl.SSLContext:
    """OpenSSL's default verify paths (read now, so `SSL_CERT_FILE`/`SSL_CERT_DIR` count) plus `extra_cas`."""
    context = ssl.create_default_context()
    for ca in extra_cas:
        context.load_verify_locations(cafile=str(ca))
    return context


class SystemTrustSession(_FixedTrustSession):
    """Trusts the system's CA store plus `extra_cas` (registries, blob storage, a public api)."""

    def __init__(self, extra_cas: Iterable[Path] = ()):
        super().__init__(True)
        self.mount("https://", _ContextAdapter(system_trust_context(extra_cas)))
