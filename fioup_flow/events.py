"""The update events a device reports, in fioup's wire format (fioup.md section 3).

Same names, same fields, same version, so a FoundriesFactory (or anything that reads its
events) understands fioup-flow's. The event id is chosen when the update is planned, not when
the event is sent, so a resend after a crash is recognisably the same event.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

EVENT_TYPES = (
    "MetadataUpdateCompleted",
    "UpdateInitStarted",
    "UpdateInitCompleted",
    "EcuDownloadStarted",
    "EcuDownloadCompleted",
    "EcuInstallationStarted",
    "EcuInstallationApplied",
    "EcuInstallationCompleted",
)
# Events whose `success` is meaningful; the "Started" ones and Applied carry null, as in fioup.
WITH_SUCCESS = {"MetadataUpdateCompleted", "UpdateInitCompleted", "EcuDownloadCompleted", "EcuInstallationCompleted"}
DETAILS_MAX = 2048
TRUNCATED = "...[TRUNCATED]"


def details_text(details: dict[str, Any] | None) -> str:
    if not details:
        return ""
    text = json.dumps(details, sort_keys=True)
    return text if len(text) <= DETAILS_MAX else text[: DETAILS_MAX - len(TRUNCATED)] + TRUNCATED


def make_event(event_id: str, event_type: str, correlation_id: str, target_name: str, version: int | str,
               success: bool | None = None, details: dict[str, Any] | None = None) -> dict[str, Any]:
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    return {
        "id": event_id,
        "deviceTime": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "eventType": {"id": event_type, "version": 2},
        "event": {
            "correlationId": correlation_id,
            "success": success if event_type in WITH_SUCCESS else None,
            "targetName": target_name,
            "version": str(version),
            "details": details_text(details),
        },
    }
