"""The Device Gateway client: one mutual-TLS session, fioup's headers, bounded retries.

Every call the device makes to its factory goes through `GatewayClient.request`, so timeouts,
retries and headers are decided in one place. Retries cover what is worth retrying (transport
errors and 5xx answers) with jittered exponential backoff, bounded in time so that a dead link
turns into a clear error instead of a hang; a 4xx answer is final and is not retried.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable

import requests
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from fioup_flow import __version__
from fioup_flow.config import Config
from fioup_flow.errors import FioupFlowError, NotConfiguredError

log = logging.getLogger(__name__)

USER_AGENT = f"fioup-flow/{__version__}"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
RETRY_SECONDS_ENV = "FIOUP_FLOW_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 60.0


class GatewayError(FioupFlowError):
    """The gateway could not be reached or refused a request; callers re-raise it as their own code."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class ServerError(Exception):
    """A 5xx answer, raised internally so that the retry policy can see it."""

    def __init__(self, response: requests.Response):
        super().__init__(f"{response.status_code} {response.reason}")
        self.response = response


def retry_budget_seconds() -> float:
    """How long a call may keep retrying: `$FIOUP_FLOW_RETRY_SECONDS`, default 60 s."""
    try:
        return float(os.environ.get(RETRY_SECONDS_ENV, DEFAULT_RETRY_SECONDS))
    except ValueError:
        return DEFAULT_RETRY_SECONDS


def is_transient(exc: BaseException) -> bool:
    """Transport failures and 5xx answers may heal on their own; anything else will not."""
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, ServerError))


def retrying(budget_s: float | None = None, max_attempts: int = 8) -> Retrying:
    """The retry policy shared by the gateway and the registry: jittered backoff, bounded in time."""
    budget = retry_budget_seconds() if budget_s is None else budget_s
    return Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=0.5, max=15),
        stop=stop_after_delay(budget) | stop_after_attempt(max_attempts),
        reraise=True,
    )


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed request, without requests' nested reprs."""
    if isinstance(exc, ServerError):
        return f"the server answered {exc}"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS failed: {exc.args[0] if exc.args else exc}"
    if isinstance(exc, requests.ConnectionError):
        return "cannot connect"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return str(exc)


class GatewayClient:
    """A session with the Device Gateway, authenticated by the device's client certificate."""

    def __init__(self, config: Config, retry_seconds: float | None = None):
        self.base_url = config.server
        for path in (config.ca_cert, config.client_cert, config.client_key):
            if not path.is_file():
                raise NotConfiguredError(f"{path} is missing; register the device first (fioup-flow register)")
        self.session = requests.Session()
        self.session.cert = (str(config.client_cert), str(config.client_key))
        self.session.verify = str(config.ca_cert)
        self.session.headers.update({"User-Agent": USER_AGENT, "x-ats-tags": ",".join(config.tags)})
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
