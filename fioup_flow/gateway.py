"""The Device Gateway client: one mutual-TLS session, fioup's headers, bounded retries.

Every call the device makes to its factory goes through `GatewayClient.request`, so timeouts,
retries and headers are decided in one place. Retries cover what is worth retrying (transport
errors and 5xx answers) with jittered exponential backoff, bounded in time so that a dead link
turns into a clear error instead of a hang; a 4xx answer is final and is not retried.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import requests

from fioup_flow.config import Config
from fioup_flow.errors import FioupFlowError, NotConfiguredError
from fioup_flow.retry import ServerError, describe, retrying
from fioup_flow.tls import PinnedCASession

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0


class GatewayError(FioupFlowError):
    """The gateway could not be reached or refused a request; callers re-raise it as their own code."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class GatewayClient:
    """A session with the Device Gateway, authenticated by the device's client certificate."""

    def __init__(self, config: Config, retry_seconds: float | None = None):
        self.base_url = config.server
        for path in (config.ca_cert, config.client_cert, config.client_key):
            if not path.is_file():
                raise NotConfiguredError(f"{path} is missing; register the device first (fioup-flow register)")
        self.session = PinnedCASession(config.ca_cert)
        self.session.cert = (str(config.client_cert), str(config.client_key))
        self.session.headers["x-ats-tags"] = ",".join(config.tags)
        self.retry_seconds = retry_seconds

    def set_current(self, target_name: str | None, app_names: Iterable[str]) -> None:
        """Tell the gateway, in every later request, which Target and apps the device runs."""
        headers = self.session.headers
        if target_name:
            headers["x-ats-target"] = target_name
        else:
            headers.pop("x-ats-target", None)
        headers["x-ats-dockerapps"] = ",".join(sorted(app_names))

    def url(self, path: str) -> str:
        return path if path.startswith("https://") else f"{self.base_url}/{path.lstrip('/')}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send a request, retrying transient failures; a non-2xx final answer raises GatewayError."""
        url = self.url(path)
        kwargs.setdefault("timeout", (CONNECT_TIMEOUT_S, READ_TIMEOUT_S))

        def attempt() -> requests.Response:
            response = self.session.request(method, url, **kwargs)
            if response.status_code >= 500:
                raise ServerError(response)
            return response

        try:
            response = retrying(self.retry_seconds)(attempt)
        except (requests.RequestException, ServerError) as exc:
            status = exc.response.status_code if isinstance(exc, ServerError) else None
            raise GatewayError(f"{method} {url}: {describe(exc)}", status) from exc
        if not response.ok:
            raise GatewayError(f"{method} {url}: the gateway answered {response.status_code} {response.reason}",
                               response.status_code)
        return response

    def get_json(self, path: str) -> Any:
        return self.request("GET", path).json()

    def put_json(self, path: str, payload: Any) -> None:
        self.request("PUT", path, json=payload)

    def post_json(self, path: str, payload: Any) -> None:
        self.request("POST", path, json=payload)
