"""What the power-cut harness judges from the world, never from what fioup-flow says of itself.

- `pinned_images`: the image ID (config digest) each service of a Target's app pins, read from
  the factory registry's own storage (app manifest -> bundle -> compose file -> image manifest ->
  config), not through the device.
- `world_problems`: whether the engine runs exactly that (each service of each target app has a
  running container with that image ID, no container of another image of the app runs, no app
  the Target dropped runs) and the sample app serves the version's page.
- `judge_events`: the gateway's records of an update against the event ids and order its frozen
  plan names, and how many events the device sent again (the gateway's `deliveries` log).

The judgements are plain functions of what was read, so each can be fed a wrong world in a test.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import yaml

from fioup_flow.factory.home import FactoryHome
from fioup_flow.factory.publish import sample_path
from fioup_flow.graph import Plan

PROJECT = "com.docker.compose.project"
SERVICE = "com.docker.compose.service"
SAMPLE_APP = "shellhttpd"  # the sample that serves a page naming its version


# --- what a Target pins, from the registry's storage ------------------------------------------------


def _registry_blob(home: FactoryHome, digest: str) -> bytes:
    """A blob (manifests too) as the factory's registry stores it on disk."""
    hexpart = digest.split(":", 1)[1]
    return (home.registry_data / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexpart[:2] / hexpart
            / "data").read_bytes()


def _compose(bundle: bytes) -> dict:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(bundle))) as tar:
        member = next(m for m in tar.getmembers() if m.name.lstrip("./") == "docker-compose.yml")
        return yaml.safe_load(tar.extractfile(member).read())


def _config_digest(home: FactoryHome, image: str, arch: str) -> str:
    manifest = json.loads(_registry_blob(home, image.rsplit("@", 1)[1]))
    if "manifests" in manifest:  # an index: this machine's platform
        child = next(m for m in manifest["manifests"]
                     if (m.get("platform") or {}).get("architecture") == arch and m["platform"].get("os") == "linux")
        manifest = json.loads(_registry_blob(home, child["digest"]))
    return manifest["config"]["digest"]


def pinned_images(home: FactoryHome, app_uri: str, arch: str) -> dict[str, str]:
    """{service: image ID} of the app `app_uri` names, from the registry's storage."""
    manifest = json.loads(_registry_blob(home, app_uri.rsplit("@", 1)[1]))
    compose = _compose(_registry_blob(home, manifest["layers"][0]["digest"]))
    return {service: _config_digest(home, spec["image"], arch) for service, spec in compose["services"].items()}


def sample_page(sample: str) -> str:
    """The page the sample app `sample` (e.g. "shellhttpd/v2") serves."""
    return (sample_path(sample) / "images" / "web" / "www" / "index.html").read_text()


@dataclass(frozen=True)
class Expected:
    """A Target as the world must show it: per app, per service, the image ID; the sample page."""

    version: int
    images: dict[str, dict[str, str]]
    page: str | None  # what the sample app answers, if the Target has it


# --- the engine and the sample app -----------------------------------------------------------------


@dataclass(frozen=True)
class Running:
    """A running container, as the engine describes it."""

    app: str
    service: str
    image_id: str
    name: str


def running_containers(engine) -> list[Running]:
    """Every running container that belongs to a compose project."""
    found = []
    for container in engine.api.containers(filters={"label": PROJECT, "status": "running"}):
        labels = container["Labels"]
        found.append(Running(labels[PROJECT], labels.get(SERVICE, ""), container["ImageID"],
                             container["Names"][0].lstrip("/")))
    return found


def world_problems(expected: Expected, running: list[Running], page: Callable[[], str]) -> list[str]:
    """What in the world differs from the Target (empty: it runs exactly the Target)."""
    problems = []
    for app, services in sorted(expected.images.items()):
        ours = [c for c in running if c.app == app]
        for service, image_id in sorted(services.items()):
            if not any(c.service == service and c.image_id == image_id for c in ours):
                problems.append(f"{app}/{service}: no running container with image {image_id[:19]}")
        problems += [f"{app}/{c.service}: {c.name} runs image {c.image_id[:19]}, not the Target's"
                     for c in ours if services.get(c.service) != c.image_id]
    problems += [f"dropped app {app} still runs ({', '.join(sorted(c.name for c in running if c.app == app))})"
                 for app in sorted({c.app for c in running} - set(expected.images))]
    if expected.page is not None:
        try:
            served = page()
        except OSError as exc:  # requests' errors are OSErrors
            served = f"no answer: {exc.__class__.__name__}"
        if served.strip() != expected.page.strip():
            problems.append(f"the sample app serves {served.strip()[:80]!r}, not {expected.page.strip()!r}")
    return problems


# --- events ------------------------------------------------------------------------------------------


@dataclass
class EventVerdict:
    """Invariant 3 for one update: what is wrong (empty: nothing), records kept, events re-sent."""

    problems: list[str] = field(default_factory=list)
    records: int = 0  # records the gateway kept of this update's events
    resends: int = 0  # events that arrived again (a resend is allowed; a second record is not)
    lost: int = 0
    duplicated: int = 0


def plan_events(plan: Plan) -> list[tuple[str, str]]:
    """The (event id, event type) the plan sends, in the order it sends them."""
    return [(node.params["event_id"], node.params["event"]) for node in (plan.node(n) for n in plan.order())
            if node.kind == "report"]


def _count_records(verdict: EventVerdict, records: list[dict], deliveries: list[dict]) -> Counter:
    """Records per event id; into `verdict`: the ids recorded twice (a problem) and the resends."""
    counts = Counter(r["id"] for r in records)
    verdict.duplicated = sum(n - 1 for n in counts.values())
    verdict.resends = sum(len(d["ids"]) - d["new"] for d in deliveries)
    if verdict.duplicated:
        verdict.problems.append("recorded twice: " + ", ".join(f"{i[:8]} x{n}" for i, n in counts.items() if n > 1))
    return counts


def judge_events(plan: Plan, records: list[dict], deliveries: list[dict]) -> EventVerdict:
    """The gateway's `records` of an update (every event the device reported since the update
    began, other than the TUF refresh's) against the events its frozen `plan` names.

    Without a failed attempt the records must be exactly the plan's event ids in the plan's
    order, each under the plan's correlation id. After a failed attempt (an event that reports
    failure), fioup-flow may send the remaining events under a new correlation id: then the
    plan's own events must be a prefix of the plan's, in order, every event type of the plan
    must be recorded, in order within each correlation id, and no id may be recorded twice.
    """
    verdict = EventVerdict()
    expected = plan_events(plan)
    update = [r for r in records if r["eventType"]["id"] != "MetadataUpdateCompleted"]
    counts = _count_records(verdict, update, deliveries)
    verdict.records = sum(1 for r in update if r["id"] in dict(expected))
    got = [(r["id"], r["eventType"]["id"]) for r in update]
    failed = any(r["event"].get("success") is False for r in update)
    if not failed:
        verdict.lost = len(set(dict(expected)) - set(counts))
        if got != expected:
            verdict.problems.append(f"expected {_show(expected)}, recorded {_show(got)}")
        others = sorted({r["event"]["correlationId"] for r in update} - {plan.plan_id})
        if others:
            verdict.problems.append(f"events under another correlation id than the plan's: {others}")
        return verdict
    own = [(r["id"], r["eventType"]["id"]) for r in update if r["event"]["correlationId"] == plan.plan_id
           and r["event"].get("success") is not False]
    if own != expected[:len(own)]:
        verdict.problems.append(f"the plan's events out of order: expected a prefix of {_show(expected)}, "
                                f"recorded {_show(own)}")
    types = [t for _, t in expected]
    seen = [r["eventType"]["id"] for r in update if r["event"].get("success") is not False]
    missing = [t for t in types if t not in seen]
    verdict.lost = len(missing)
    if missing:
        verdict.problems.append(f"never recorded, under any attempt: {missing}")
    for correlation in dict.fromkeys(r["event"]["correlationId"] for r in update):
        kinds = [r["eventType"]["id"] for r in update
                 if r["event"]["correlationId"] == correlation and r["event"].get("success") is not False]
        if kinds != sorted(kinds, key=lambda kind: types.index(kind) if kind in types else len(types)):
            verdict.problems.append(f"attempt {correlation}: events out of the protocol's order: {kinds}")
    return verdict


def judge_failed_events(plan: Plan, records: list[dict], deliveries: list[dict]) -> EventVerdict:
    """The gateway's `records` of the last attempt at an update that failed (its own correlation id
    only): its plan's events up to the failure, in order, each once, then `EcuInstallationCompleted`
    with `success: false` (fioup-flow's report of the failure, which its plan cannot name)."""
    verdict = EventVerdict()
    expected = plan_events(plan)
    _count_records(verdict, records, deliveries)
    verdict.records = len(records)
    if not records or records[-1]["eventType"]["id"] != "EcuInstallationCompleted" \
            or records[-1]["event"].get("success") is not False:
        verdict.problems.append("the failed update does not end with EcuInstallationCompleted success false")
        verdict.lost = 1
    got = [(r["id"], r["eventType"]["id"]) for r in records[:-1]]
    if got != expected[:len(got)]:
        verdict.problems.append(f"the failed update's events: expected a prefix of {_show(expected)}, "
                                f"recorded {_show(got)}")
    return verdict


def _show(events: Iterable[tuple[str, str]]) -> str:
    return "[" + ", ".join(f"{kind}:{event_id[:8]}" for event_id, kind in events) + "]"
