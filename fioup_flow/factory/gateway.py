"""The Device Gateway's routes (fioup.md §3), behind mutual TLS.

The TLS layer has already checked that the client certificate was signed by the factory CA;
here the certificate's CN names the device, which must be registered. Every request refreshes
the device's `last_seen`.
"""

from __future__ import annotations

import re
import time

from fioup_flow.factory.devices import DeviceRecords
from fioup_flow.factory.faults import Faults
from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.http import Call, HttpError, Reply
from fioup_flow.factory.tufrepo import CI, PRODUCTION, VIEW_FILES, TufRepository

ROOT_PATH = re.compile(r"^/repo/(\d+)\.root\.json$")
SYSTEM_INFO_PATH = re.compile(r"^/system_info(?:/(network|config))?/?$")


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
        self.devices.touch(device["uuid"])
        if call.path.startswith("/repo/"):
            return self._repo(call)
        if (match := SYSTEM_INFO_PATH.match(call.path)) and call.method == "PUT":
            self.devices.store_system_info(device["uuid"], match.group(1) or "", call.body)
            return Reply(200)
        route = (call.method, call.path.rstrip("/") or "/")
        if route == ("POST", "/events"):
            return self._events(call, device)
        if route == ("POST", "/apps-states"):
            self.devices.record_apps_state(device["uuid"], _json_object(call))
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
        events = call.json()
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise HttpError(400, "events must be a JSON array of objects")
        self.devices.record_events(device["uuid"], events)
        time.sleep(float(self.faults.get("events_delay_s", 0)))
        return Reply(200)

    def _whoami(self, device: dict) -> dict:
        factory = self.home.load_state()["factory"]
        return {"factory": factory, "repo_id": factory, "uuid": device["uuid"], "name": device["name"],
                "created_at": device["created_at"], "last_seen": device["last_seen"],
                "pubkey": device["pubkey"], "tag": ",".join(device["tags"])}


def _json_object(call: Call) -> dict:
    body = call.json()
    if not isinstance(body, dict):
        raise HttpError(400, "body must be a JSON object")
    return body
