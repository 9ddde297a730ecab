"""HTTP sessions that trust exactly the factory's CA.

requests lets `$REQUESTS_CA_BUNDLE` (set on many systems) override a session's `verify`, which
would make the device trust the system's CAs instead of its factory's, or fail to verify the
factory's servers at all. The device's sessions pin the CA they were given.
"""

from __future__ import annotations

from pathlib import Path

import requests

from fioup_flow import __version__

USER_AGENT = f"fioup-flow/{__version__}"


class PinnedCASession(requests.Session):
    def __init__(self, ca_cert: Path):
        super().__init__()
        self.verify = str(ca_cert)
        self.headers["User-Agent"] = USER_AGENT

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # noqa: D102 - requests' hook
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None or verify is True:
            settings["verify"] = self.verify
        return settings
