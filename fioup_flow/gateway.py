"""The Device Gateway client: one mutual-TLS session, fioup's headers, bounded retries.

Every call the device makes to its factory goes through `GatewayClient.request`, so timeouts,
retries and headers are decided in one place. Retries cover what is worth retrying (transport
errors and 5xx answers) with jittered exponential backoff, bounded in time so that a dead link
turns into a clear error instead of a hang; a 4xx answer is final and is not retried.

Once a request stayed unanswered through a whole retry budget, the client remembers that the
gateway is out of reach: for one more budget every request fails at once, and after it a single
try (no retries) tells whether it is back. So a run against a dead gateway pays one budget, not
one per report or per blob; what could not be sent waits in the outbox.

fioup's check-in headers (`x-ats-target`, `x-ats-dockerapps`) name what the device runs. fioup
sets them after each check and after each successful start; here they are read, at each
request, from what the device runs (`running`), which is the same thing without the moments to
remember: after the commit node of an update, the next request already names the new Target.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Sequence

import requests

from fioup_flow.config import Config
from fioup_flow.errors import FioupFlowError, NotConfiguredError
from fioup_flow.retry import ServerError, describe, retry_budget_seconds, retrying
from fioup_flow.tls import PinnedCASession

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
RETRY_LATER = (408, 429)  # "too slow" and "too many": 4xx answers that mean "try again later"

# What the device runs: (Target name, app names), or None for a fresh device.
Running = Callable[[], "tuple[str, Sequence[str]] | None"]


class GatewayError(FioupFlowError):
    """The gateway could not be reached or refused a request; callers re-raise it as their own code."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code

    @property
    def refused(self) -> bool:
        """The gateway answered and refused this request for good (a 4xx other than 408 and 429):
        sending the same request again would be refused again."""
        return self.status_code is not None and 400 <= self.status_code < 500 and self.status_code not in RETRY_LATER


class NotSentError(GatewayError):
    """A request deliberately not sent: an offline update contacts no gateway. Nothing failed; what
    was to be sent waits in the outbox."""


class GatewayClient:
    """A session with the Device Gateway, authenticated by the device's client certificate."""

    def __init__(self, config: Config, retry_seconds: float | None = None, running: Running | None = None):
        self.base_url = config.server
        for path in (config.ca_cert, config.client_cert, config.client_key):
            if not path.is_file():
                raise NotConfiguredError(f"{path} is missing; register the device first (fioup-flow register)")
        self.session = PinnedCASession(config.ca_cert)
        self.session.cert = (str(config.client_cert), str(config.client_key))
        self.session.headers["x-ats-tags"] = ",".join(config.tags)
        self.retry_seconds = retry_seconds
        self.running = running
        self._reach = threading.Lock()
        self._out_of_reach: str | None = None  # why the last request found the gateway out of reach
        self._next_try = 0.0  # monotonic time before which requests fail at once

    def _checkin_headers(self) -> dict[str, str]:
        """`x-ats-target` and `x-ats-dockerapps` for what the device runs now (none on a fresh device)."""
        running = self.running() if self.running else None
        if running is None:
            return {}
        name, apps = running
        return {"x-ats-target": name, "x-ats-dockerapps": ",".join(apps)}

    def _budget(self, method: str, url: str) -> float | None:
        """The retry budget for the next request: the usual one, none (a single try) once the gateway
        was found out of reach, and a GatewayError at once while that finding is fresh."""
        with self._reach:
            if self._out_of_reach is None:
                return self.retry_seconds
            wait = self._next_try - time.monotonic()
            if wait > 0:
                raise GatewayError(f"{method} {url}: the gateway is out of reach ({self._out_of_reach}); "
                                   f"not tried again for {wait:.0f} s")
            return 0.0

    def _reached(self, reason: str | None) -> None:
        """Remember whether the gateway answered (reason None) or stayed out of reach through a budget."""
        with self._reach:
            if reason is not None and self._out_of_reach is None:
                log.warning("the gateway is out of reach (%s): later requests of this run fail at once", reason)
            elif reason is None and self._out_of_reach is not None:
                log.info("the gateway answers again")
            self._out_of_reach = reason
            budget = retry_budget_seconds() if self.retry_seconds is None else self.retry_seconds
            self._next_try = time.monotonic() + budget

    def try_again(self) -> None:
        """Let the next request reach out at once (a single try, if the gateway was found out of reach):
        between cycles the daemon's backoff, not this memory, says when to look again."""
        with self._reach:
            self._next_try = 0.0

    def url(self, path: str) -> str:
        return path if path.startswith("https://") else f"{self.base_url}/{path.lstrip('/')}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send a request, retrying transient failures; a non-2xx final answer raises GatewayError."""
        url = self.url(path)
        kwargs.setdefault("timeout", (CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        kwargs["headers"] = {**self._checkin_headers(), **kwargs.get("headers", {})}
        budget = self._budget(method, url)

        def attempt() -> requests.Response:
            response = self.session.request(method, url, **kwargs)
            if response.status_code >= 500:
                raise ServerError(response)
            return response

        try:
            response = retrying(budget)(attempt)
        except (requests.RequestException, ServerError) as exc:
            status = exc.response.status_code if isinstance(exc, ServerError) else None
            self._reached(describe(exc))
            raise GatewayError(f"{method} {url}: {describe(exc)}", status) from exc
        self._reached(None)
        if not response.ok:
            raise GatewayError(f"{method} {url}: the gateway answered {response.status_code} {response.reason}",
                               response.status_code)
        return response

    def get_json(self, path: str) -> Any:
        return self.request("GET", path).json()

    def put_json(self, path: str, payload: Any) -> None:
        self.request("PUT", path, json=payload)

    def send(self, method: str, path: str, payload: Any) -> None:
        """Send a report: JSON, or text as it is (`PUT /system_info/config` carries the TOML config)."""
        if isinstance(payload, str):
            self.request(method, path, data=payload.encode(), headers={"Content-Type": "application/toml"})
        else:
            self.request(method, path, json=payload)
