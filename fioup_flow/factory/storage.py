"""The blob storage listener: where the factory's registries redirect blob GETs, as cloud storage.

The real hub answers a blob GET with a 307 to cloud storage (a signed URL), and Docker Hub with
one to its CDN; Distribution does the same through its `redirect` storage middleware, whose URL
is the blob's path in the registry's storage (registry.py configures it). This listener serves
those paths, `/docker/registry/v2/blobs/sha256/<ab>/<hex>/data`, from the registries' storage
folders, with byte ranges (a device resumes a partial blob across the redirect), under a
certificate of the public CA.

Like cloud storage (S3 and GCS refuse a signed URL that also carries an Authorization header),
it refuses a request with an `Authorization` header: registry credentials have no business
here. Every request is logged, one JSON line each, in `logs/storage.log` (the storage's own
log): method, path, range, whether an Authorization header came, status and bytes.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.http import Call, FileSlice, HttpError, Reply

LOG = "storage"
BLOB_PATH = re.compile(r"^/docker/registry/v2/blobs/sha256/([0-9a-f]{2})/([0-9a-f]{64})/data$")
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class BlobStorageApp:
    def __init__(self, home: FactoryHome):
        self.home = home
        self.log_path = home.log_file(LOG)
        self._log_lock = threading.Lock()

    def handle(self, call: Call) -> Reply:
        try:
            reply = self._serve(call)
        except HttpError as exc:
            self._log(call, exc.status, 0)
            raise
        self._log(call, reply.status, reply.length if call.method == "GET" else 0)
        return reply

    def _serve(self, call: Call) -> Reply:
        if call.method not in ("GET", "HEAD"):
            raise HttpError(405, "the storage is read-only")
        if "authorization" in call.headers:
            raise HttpError(400, "a signed storage URL takes no Authorization header")
        blob = self._blob(call.path)
        size = blob.stat().st_size
        requested = call.headers.get("range")
        if requested is None:
            return Reply(200, FileSlice(blob, 0, size), "application/octet-stream")
        match = RANGE.match(requested.strip())
        if not match or int(match[1]) >= size:
            raise HttpError(416, f"cannot serve range {requested!r} of {size} bytes",
                            {"Content-Range": f"bytes */{size}"})
        first = int(match[1])
        last = min(int(match[2]), size - 1) if match[2] else size - 1
        return Reply(206, FileSlice(blob, first, last - first + 1), "application/octet-stream",
                     {"Content-Range": f"bytes {first}-{last}/{size}"})

    def _blob(self, path: str) -> Path:
        """The file behind a blob path, in whichever registry's storage has it (blobs are content-addressed)."""
        match = BLOB_PATH.match(path)
        if not match or match[2][:2] != match[1]:
            raise HttpError(404, f"no blob at {path}")
        for data in (self.home.registry_data, self.home.thirdparty_data):
            candidate = data / path.lstrip("/")
            if candidate.is_file():
                return candidate
        raise HttpError(404, f"no blob at {path}")

    def _log(self, call: Call, status: int, sent: int) -> None:
        line = {"method": call.method, "path": call.path, "range": call.headers.get("range"),
                "authorization": "authorization" in call.headers, "status": status, "bytes": sent}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._log_lock, open(self.log_path, "a") as log:
            log.write(json.dumps(line, sort_keys=True) + "\n")


def storage_requests(home: FactoryHome) -> list[dict]:
    """Every request the blob storage answered so far, from its own log."""
    path = home.log_file(LOG)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
