"""The retry policy for everything that crosses the network: gateway calls and registry fetches.

Only what may heal on its own is retried (transport errors, 5xx answers), with jittered
exponential backoff so a fleet does not hammer a recovering server in step, and bounded in time
so that a dead link becomes a clear error instead of a hang.
"""

from __future__ import annotations

import os

import requests
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

RETRY_SECONDS_ENV = "FIOUP_FLOW_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 60.0


class ServerError(Exception):
    """A 5xx answer, raised so that the retry policy can see it."""

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
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                            ServerError))


def retrying(budget_s: float | None = None, max_attempts: int = 8) -> Retrying:
    """A tenacity policy: jittered backoff, at most `max_attempts` tries within `budget_s` seconds."""
    budget = retry_budget_seconds() if budget_s is None else budget_s
    return Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=0.5, max=15),
        stop=stop_before_delay(budget) | stop_after_attempt(max_attempts),  # no sleep past the budget
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
