"""The Device Gateway's routes (fioup.md §3), behind mutual TLS.

The TLS layer has already checked that the client certificate was signed by the factory CA;
here the certificate's CN names the device, which must be registered. Every request refreshes
the device's `last_seen` and, as dg-satellite's `checkinDevice` does, records the Target, apps
and tag that fioup's `x-ats-*` headers name (a header absent keeps what was recorded).

What a report must look like is dg-satellite's rule (`server/gateway/handlers*.go`): bodies over
100 KiB are refused with 413 (echo's BodyLimit("100K")); a body that does not decode into the
Go types is refused with 400 (a field of the wrong JSON type fails `json.Unmarshal`; null and
unknown fields pass); events without an id or with an invalid correlation id are skipped with
200 ("zero-error logic"); apps-states need an RFC 3339 `deviceTime`; system info must be JSON,
the network one of its shape.
"""

from __future__ import annotations

import re
import time
from typing import Any

from fioup_flow.factory.devices import DeviceRecords
from fioup_flow.factory.faults import Faults
from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.http import Call, HttpError, Reply
from fioup_flow.factory.tufrepo import CI, PRODUCTION, VIEW_FILES, TufRepository

ROOT_PATH = re.compile(r"^/repo/(\d+)\.root\.json$")
SYSTEM_INFO_PATH = re.compile(r"^/system_info(?:/(network|config))?/?$")
BODY_LIMIT = 100 * 1024  # dg-satellite: middleware.BodyLimit("100K") on every mutual-TLS route
CORRELATION_ID = re.compile(r"^[a-zA-Z0-9_\-]+$")  # dg-satellite storage.ValidCorrelationId
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
CHECKIN_HEADERS = {"target": "x-ats-target", "apps": "x-ats-dockerapps", "tag": "x-ats-tags"}

# The Go types the routes decode into (dg-satellite storage/models.go, server/gateway/models.go).
EVENT = {"id": str, "deviceTime": str, "eventType": {"id": str, "version": int},
         "event": {"correlationId": str, "ecu": str, "success": bool, "targetName": str, "version": str,
                   "details": str}}
SERVICE = {k: str for k in ("name", "hash", "health", "image", "logs", "state", "status")}
APPS_STATES = {"deviceTime": str, "ostree": str, "apps": ("map", {"uri": str, "state": str, "services": [SERVICE]})}
NETWORK_INFO = {"hostname": str, "mac": str, "local_ipv4": str}


class GatewayApp:
    def __init__(self, home: FactoryHome):
        self.home = home
        self.devices = DeviceRecords(home)
        self.repo = TufRepository(home)
        self.faults = Faults(home)

    def handle(self, call: Call) -> Reply:
        device = self.devices.get(call.peer_cn) if call.peer_cn else None
        if device is None:
            raise HttpError(401, "unknown device")
        if len(call.body) > BODY_LIMIT:
            raise HttpError(413, "Request Entity Too Large")
        self.devices.touch(device["uuid"], {key: call.headers[name] for key, name in CHECKIN_HEADERS.items()
                                            if name in call.headers})
        if call.path.startswith("/repo/"):
            return self._repo(call)
        if (match := SYSTEM_INFO_PATH.match(call.path)) and call.method == "PUT":
            kind = match.group(1) or ""
            if kind != "config":
                _decode(call, NETWORK_INFO if kind == "network" else None)
            self.devices.store_system_info(device["uuid"], kind, call.body)
            return Reply(200)
        route = (call.method, call.path.rstrip("/") or "/")
        if route == ("POST", "/events"):
            return self._events(call, device)
        if route == ("POST", "/apps-states"):
            states = _decode(call, APPS_STATES)
            if not RFC3339.match(str((states or {}).get("deviceTime") or "")):
                raise HttpError(400, f"Failed to parse device time, must be RFC3339: {states.get('deviceTime')}")
            self.devices.record_apps_state(device["uuid"], states)
            return Reply(200)
        if route == ("GET", "/device"):
            return Reply.json(self._whoami(device))
        if route == ("GET", "/hub-creds"):
            return Reply.json({"ServerURL": self.home.load_state()["registry_host"],
                               "Username": device["uuid"], "Secret": device["registry_secret"]})
        if route == ("GET", "/config"):
            return Reply(204, content_type="")
        raise HttpError(404, f"no route {call.method} {call.path}")

    def _repo(self, call: Call) -> Reply:
        """The TUF metadata of the device's repository (production by its certificate, else CI)
        and tags, as dg-satellite serves it (`server/gateway/handlers_meta.go`): 404 without
        `x-ats-tags`."""
        if call.method != "GET":
            raise HttpError(405, "the repository is read-only")
        tags = [t.strip() for t in call.headers.get("x-ats-tags", "").split(",") if t.strip()]
        if not tags:
            raise HttpError(404, "device sent no tag (x-ats-tags)")
        repo = PRODUCTION if call.peer_business_category == "production" else CI
        if match := ROOT_PATH.match(call.path):
            data = self.repo.root_json(repo, int(match.group(1)))
            if data is None:
                raise HttpError(404, f"no root version {match.group(1)}")
            return Reply(200, data)
        name = call.path.removeprefix("/repo/")
        if name not in VIEW_FILES:
            raise HttpError(404, f"no repository file {name}")
        return Reply(200, self.repo.view_file(repo, tags, name).read_bytes())

    def _events(self, call: Call, device: dict) -> Reply:
        events = _decode(call, [EVENT]) or []
        valid = [e for e in events if e and e.get("id") and CORRELATION_ID.match((e.get("event") or {}).get(
            "correlationId") or "")]  # the others are skipped, and the upload still succeeds
        self.devices.record_events(device["uuid"], valid, target=call.headers.get("x-ats-target"))
        time.sleep(float(self.faults.get("events_delay_s", 0)))
        return Reply(200)

    def _whoami(self, device: dict) -> dict:
        factory = self.home.load_state()["factory"]
        return {"factory": factory, "repo_id": factory, "uuid": device["uuid"], "name": device["name"],
                "created_at": device["created_at"], "last_seen": device["last_seen"],
                "pubkey": device["pubkey"], "tag": ",".join(device["tags"])}


def _decode(call: Call, shape: Any) -> Any:
    """The body as JSON, refused with 400 where Go's json.Unmarshal into `shape` would fail."""
    body = call.json()
    if shape is not None and not _fits(body, shape):
        raise HttpError(400, "Failed to parse request JSON body")
    return body


def _fits(value: Any, shape: Any) -> bool:
    """Whether `value` decodes into the Go type `shape` describes: a Python type for a scalar, a
    dict for a struct, a one-item list for a slice, ("map", shape) for a map of strings to shape."""
    if value is None:
        return True  # null decodes into anything, as its zero value
    if isinstance(shape, list):
        return isinstance(value, list) and all(_fits(v, shape[0]) for v in value)
    if isinstance(shape, tuple):
        return isinstance(value, dict) and all(_fits(v, shape[1]) for v in value.values())
    if isinstance(shape, dict):
        return isinstance(value, dict) and all(_fits(value.get(k), s) for k, s in shape.items())
    if shape is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, shape)
