"""What the factory's HTTPS listeners share: the request a route sees and the reply it gives.

Routes (gateway.py, api.py, storage.py) are plain functions of a `Call` returning a `Reply`, so they know
nothing of sockets or TLS; server.py turns HTTP requests into Calls. `HttpError` lets a route
stop with a status from anywhere below it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: bytes
    # The subject CN of the client certificate (gateway only): the device uuid.
    peer_cn: str | None = None
    # Its businessCategory (OID 2.5.4.15): "production" marks a production device.
    peer_business_category: str | None = None

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HttpError(400, f"body is not JSON: {exc}") from exc


@dataclass(frozen=True)
class FileSlice:
    """`length` bytes of a file from `offset`: a body sent from disk in chunks, never whole in memory."""

    path: Path
    offset: int
    length: int


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes | FileSlice = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.body.length if isinstance(self.body, FileSlice) else len(self.body)

    @classmethod
    def json(cls, payload: Any, status: int = 200) -> Reply:
        return cls(status, json.dumps(payload).encode())


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}

    def reply(self) -> Reply:
        return Reply(self.status, json.dumps({"error": str(self)}).encode(), headers=self.headers)
