"""Registered devices and everything they report, as files under `home.devices/<uuid>/`.

`device.json` holds the registration (name, uuid, hardware id, tags, device group, public key,
the device's registry secret, created_at / last_seen as epoch seconds, and `checkin`: the Target,
apps and tag its last requests named in fioup's `x-ats-*` headers); `registration.json` the
registration request as it arrived. Events and app states are JSON lines,
append-only and fsynced, so tests (and people) can read back exactly what a device sent.
Events are deduplicated by their `id`: a device re-sends a batch whose answer it lost in a
crash, and the record must still show each event once.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from fioup_flow.durable import fsync_dir, write_atomic
from fioup_flow.errors import FioupFlowError
from fioup_flow.factory.filelock import exclusive
from fioup_flow.factory.home import FactoryHome

DEVICE_FILE = "device.json"
REGISTRATION_FILE = "registration.json"
EVENTS_FILE = "events.jsonl"
APPS_STATES_FILE = "apps-states.jsonl"
DELIVERIES_FILE = "deliveries.jsonl"  # every event batch as it arrived, resends included
# PUT /system_info[/<kind>] -> the file holding the latest body.
SYSTEM_INFO_FILES = {"": "system_info.json", "network": "system_info_network.json", "config": "system_info_config.toml"}
LOGS = {"events": EVENTS_FILE, "apps-states": APPS_STATES_FILE, "deliveries": DELIVERIES_FILE}


class DeviceExistsError(FioupFlowError):
    """A device with that name or uuid is registered already (HTTP 409)."""


class DeviceRecords:
    def __init__(self, home: FactoryHome):
        self.home = home

    # --- registration --------------------------------------------------------------------
    def register(self, name: str, uuid: str, hardware_id: str, tags: list[str], pubkey_pem: str,
                 group: str | None = None, request: dict | None = None) -> dict[str, Any]:
        """Record a new device (and the `request` that registered it); DeviceExistsError if its
        name or uuid is taken."""
        with exclusive(self.home.devices_lock):
            if self.get(uuid) is not None or self._by_name(name) is not None:
                raise DeviceExistsError(f"a device named {name!r} or with uuid {uuid} exists already")
            now = time.time()
            record = {"name": name, "uuid": uuid, "hardware_id": hardware_id, "tags": list(tags), "group": group,
                      "created_at": now, "last_seen": now, "pubkey": pubkey_pem,
                      "registry_secret": secrets.token_urlsafe(24)}
            if request is not None:
                write_atomic(self._dir(uuid) / REGISTRATION_FILE, json.dumps(request, indent=2).encode(), mode=0o600)
            self._save(record)
            return record

    def registration(self, uuid: str) -> dict[str, Any] | None:
        """The registration request of a device, as it arrived."""
        path = self._dir(uuid) / REGISTRATION_FILE
        return json.loads(path.read_text()) if path.exists() else None

    # --- lookups -------------------------------------------------------------------------
    def get(self, uuid: str) -> dict[str, Any] | None:
        try:
            return json.loads((self._dir(uuid) / DEVICE_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def find(self, name_or_uuid: str) -> dict[str, Any] | None:
        """The device with this uuid, else the one with this name, else None."""
        return self.get(name_or_uuid) or self._by_name(name_or_uuid)

    def all(self) -> list[dict[str, Any]]:
        if not self.home.devices.exists():
            return []
        records = (self.get(p.name) for p in sorted(self.home.devices.iterdir()) if p.is_dir())
        return [r for r in records if r is not None]

    def _by_name(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.all() if r["name"] == name), None)

    def registry_secret_matches(self, uuid: str, secret: str) -> bool:
        record = self.get(uuid)
        return record is not None and secrets.compare_digest(record["registry_secret"], secret)

    # --- what devices report -------------------------------------------------------------
    def touch(self, uuid: str, checkin: dict[str, str] | None = None) -> None:
        """Set last_seen to now and keep what the request's check-in headers said (`checkin`: target,
        apps, tag), as dg-satellite's `Device.CheckIn` does; every gateway request does this."""
        with exclusive(self._lock(uuid)):
            record = self.get(uuid)
            if record is not None:
                record["last_seen"] = time.time()
                record["checkin"] = dict(record.get("checkin", {}), **(checkin or {}))
                self._save(record)

    def record_events(self, uuid: str, events: list[dict], target: str | None = None) -> int:
        """Append the events not recorded before (by `id`); returns how many were new. The batch goes
        to the deliveries log with the Target the request's `x-ats-target` named."""
        with exclusive(self._lock(uuid)):
            seen = {e.get("id") for e in self.events(uuid)}
            fresh = []
            for event in events:
                if event.get("id") is None or event.get("id") not in seen:
                    fresh.append(event)
                    seen.add(event.get("id"))
            self._append(uuid, DELIVERIES_FILE, [{"ids": [e.get("id") for e in events], "new": len(fresh),
                                                  "target": target}])
            self._append(uuid, EVENTS_FILE, fresh)
            return len(fresh)

    def record_apps_state(self, uuid: str, state: dict) -> None:
        with exclusive(self._lock(uuid)):
            self._append(uuid, APPS_STATES_FILE, [state])

    def store_system_info(self, uuid: str, kind: str, body: bytes) -> None:
        """Keep the latest `PUT /system_info[/kind]` body (kind: '', 'network' or 'config')."""
        with exclusive(self._lock(uuid)):  # write_atomic's temp file is per process, not per thread
            write_atomic(self._dir(uuid) / SYSTEM_INFO_FILES[kind], body, mode=0o644)

    def system_info(self, uuid: str, kind: str = "") -> bytes | None:
        path = self._dir(uuid) / SYSTEM_INFO_FILES[kind]
        return path.read_bytes() if path.exists() else None

    def events(self, uuid: str) -> list[dict]:
        return self._read_lines(uuid, EVENTS_FILE)

    def apps_states(self, uuid: str) -> list[dict]:
        return self._read_lines(uuid, APPS_STATES_FILE)

    def log(self, uuid: str, kind: str) -> list[dict]:
        """`events` or `apps-states` of a device."""
        return self._read_lines(uuid, LOGS[kind])

    # --- files ---------------------------------------------------------------------------
    def _dir(self, uuid: str) -> Path:
        if not uuid or "/" in uuid or uuid.startswith("."):
            raise ValueError(f"not a device uuid: {uuid!r}")
        return self.home.device_dir(uuid)

    def _lock(self, uuid: str) -> Path:
        return self._dir(uuid) / ".lock"

    def _save(self, record: dict) -> None:
        write_atomic(self._dir(record["uuid"]) / DEVICE_FILE, json.dumps(record, indent=2).encode(), mode=0o600)

    def _append(self, uuid: str, name: str, items: list[dict]) -> None:
        if not items:
            return
        path = self._dir(uuid) / name
        created = not path.exists()
        data = "".join(json.dumps(item, sort_keys=True) + "\n" for item in items).encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(path.parent)

    def _read_lines(self, uuid: str, name: str) -> list[dict]:
        path = self._dir(uuid) / name
        if not path.exists():
            return []
        # A line cut short by a crash of the server mid-append is not a record.
        lines = path.read_text().splitlines()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out
