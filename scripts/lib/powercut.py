"""Real updates through real power cuts: the harness behind `scripts/powercut`.

Each cut runs a real `fioup-flow apply` whose whole sota dir lives on a power-cut filesystem
(tests/faults/powercutfs.py), kills it with SIGKILL at a chosen moment (uniform over the update's
duration, or, in boundary mode, right after each node of the plan in turn) and drops every write
it had not made durable, then "boots" (`fioup-flow resume`, or `apply` again when the cut came
before the plan was frozen) and checks what a device owner relies on:

1. converged: the device is on the target, every target app runs the target's app, no app the
   target dropped still runs (in the failing scenario, whose target crash-loops, the device is back
   on its start version after a rollback, and the target is marked bad);
2. every blob in the store verifies against its digest;
3. the gateway holds each event of the final plan exactly once, in the protocol's order (failing
   scenario: also the failed update's, ending with `EcuInstallationCompleted` success false);
4. no blob that was verified on disk after the cut is downloaded again, and a partial resumes
   from what the cut kept (the registry's log). Per cut it reports the bytes the device had
   received but lost to the cut (a partial is synced every SYNC_EVERY bytes: up to 8 MiB);
5. no app that runs before and after the update stays stopped, from the moment the device boots,
   longer than it was stopped in an uninterrupted run of the same update (from the engine's own
   event log), give or take WINDOW_SLACK for a noisy machine.

A cut kills the update's whole process group (compose included) and then drops the mount's
unsynced writes. Setup (registration, reaching the start version) is fsynced file by file
before the cut run, as an idle device's write-back would have done.

The engine goes down with the power: the harness runs a dockerd of its own and a cut SIGKILLs it
with containerd, the shims, the port proxies and every container; boot starts it again on the
same data, and it restarts the containers their restart policy says to (`--keep-engine` leaves
the engine running instead). Not modelled: the engine's own files cannot live on the power-cut
mount (dockerd needs overlayfs on a real filesystem), so the engine keeps every write it made.

`--network` runs updates through FaultProxy (tests/faults/netproxy.py) in front of both the
gateway and the registry instead: the factory's `registry_host` is pointed at a proxy before
the network releases are published, so their app URIs (and hub-creds) name the proxy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import tomli_w

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from faults.netproxy import FaultProxy  # noqa: E402
from faults.powercutfs import PowercutMount  # noqa: E402
from support import SHELLHTTPD_PORT, clean_engine, registry_blob_gets  # noqa: E402

from fioup_flow.checkpoint import MARKER, CheckpointStore, store_path  # noqa: E402
from fioup_flow.events import EVENT_TYPES  # noqa: E402
from fioup_flow.factory.devices import DeviceRecords  # noqa: E402
from fioup_flow.factory.faults import Faults  # noqa: E402
from fioup_flow.factory.home import FactoryHome  # noqa: E402
from fioup_flow.factory.tufrepo import TufRepository  # noqa: E402
from fioup_flow.store import BlobStore  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts" / "lib"))
from private_engine import EngineDidNotStart, PrivateEngine  # noqa: E402

BIN = Path(sys.executable).parent
HWID = "powercut-linux"  # a hardware id of its own: its versions never replace anyone else's
TAG = "powercut"
FILLER = "--layer-mb", "shellhttpd=8"
# version -> (apps, extra publish arguments); v2 and v3 share shellhttpd v2 and its filler layer
RELEASES: dict[int, tuple[dict[str, str], tuple[str, ...]]] = {
    1: ({"shellhttpd": "shellhttpd/v1", "pair": "pair/v1"}, ()),
    2: ({"shellhttpd": "shellhttpd/v2", "pair": "pair/v1"}, FILLER),
    3: ({"shellhttpd": "shellhttpd/v2", "ticker": "ticker/v1"}, FILLER),
    4: ({"shellhttpd": "shellhttpd/v2", "crashloop": "crashloop/v1"}, FILLER),  # crash-loops: rolled back
}
# scenario -> (start version, None for a fresh device; target version)
SCENARIOS: dict[str, tuple[int | None, int]] = {
    "install": (None, 1), "change": (1, 2), "add-remove": (2, 3), "downgrade": (3, 1), "failing": (1, 4)}
# scenarios whose target fails its health window: the device ends on its start version after a
# rollback (apply exits 110), the target marked bad; each run forces it (`--force`), as a device
# reused from the cut before has it marked already
FAILING = {"failing"}
ROLLED_BACK = 110
UPDATE_EVENTS = EVENT_TYPES[EVENT_TYPES.index("UpdateInitStarted"):]
NO_UPDATE_IN_PROGRESS = 24
HEALTH_WINDOW_S = 3  # the device's `pacman.health_window`: every update waits it out, the default's 15 s would
# make most cuts land in it
# invariant 5 compares two single measurements of compose runs on a busy machine: an app may stay
# stopped up to this factor, plus this many seconds, longer than in the uninterrupted run
WINDOW_SLACK = 1.5, 1.0
RATE_LIMIT = "20M"


def sync_tree(top: Path) -> None:
    """fsync every file and folder under `top` (and `top`'s parent): what the kernel's write-back
    would have done by now on a device that sat idle, so that a cut tests the update, not setup."""
    for folder, _, files in os.walk(top, topdown=False):
        for name in files:
            path = Path(folder, name)
            if not path.is_symlink():
                fd = os.open(path, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        fd = os.open(folder, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    fd = os.open(top.parent, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


# --- the world a device lives in: engine, factory, releases ---------------------------------------


def factory_cli(*args: str) -> str:
    done = subprocess.run([str(BIN / "fioup-flow-factory"), *args], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"fioup-flow-factory {args[0]} failed: {done.stderr}")
    return done.stdout


def publish_releases(home: Path, offset: int = 0) -> dict[int, dict[str, str]]:
    """Publish RELEASES as versions offset+1.., return {version: {app: uri}}."""
    uris = {}
    for version, (apps, extra) in RELEASES.items():
        args = ["publish", "--home", str(home), "--version", str(offset + version), "--tag", TAG,
                "--hwid", HWID, *extra]
        for name, sample in apps.items():
            args += ["--app", f"{name}=sample:{sample}"]
        out = json.loads(factory_cli(*args))
        uris[offset + version] = _app_uris(out)
    return uris


def _app_uris(published: dict) -> dict[str, str]:
    """{app: uri} out of `publish`'s JSON (whatever nesting it uses: find the apps' uris)."""
    found: dict[str, str] = {}

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("docker_compose_apps"), dict):
                found.update({k: v["uri"] for k, v in node["docker_compose_apps"].items()})
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(published)
    return found


# --- a device --------------------------------------------------------------------------------------


@dataclass
class Device:
    """A registered device whose sota dir is `sota`; `drop_in` holds the harness's config."""

    name: str
    uuid: str
    sota: Path
    drop_in: Path

    @property
    def cfg_dirs(self) -> str:
        return f"{self.sota / 'sota.toml'},{self.drop_in}"

    def argv(self, *args: str) -> list[str]:
        return [str(BIN / "fioup-flow"), "-c", self.cfg_dirs, *args]

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL, env=device_env())
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(exc.cmd, -1, "", f"timed out after {timeout} s")

    def start(self, *args: str) -> subprocess.Popen:
        """Run in a process group of its own, so that a cut can take its children (compose) too."""
        return subprocess.Popen(self.argv(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, env=device_env(), start_new_session=True)

    def status(self) -> dict:
        done = self.run("status", "--json")
        return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else {}

    def version(self) -> int | None:
        return ((self.status().get("current") or {}).get("version"))

    def store(self) -> CheckpointStore:
        return CheckpointStore(store_path(self.sota / "flow"))


def device_env() -> dict[str, str]:
    return dict(os.environ, FIOUP_FLOW_RETRY_SECONDS="3")


# --- the lab: everything one run of the harness shares --------------------------------------------


@dataclass
class Lab:
    """A factory with the releases, an engine, a folder for devices (the power-cut mount)."""

    home: FactoryHome
    info: dict
    engine: docker.DockerClient
    devices_dir: Path  # where sota dirs go
    work: Path
    uris: dict[int, dict[str, str]]
    disk: PowercutMount | None = None
    offset: int = 0  # the releases are versions offset+1..offset+3
    device: Device | None = None
    power: PrivateEngine | None = None  # when set, a cut takes the engine down too, and boot starts it

    def cut(self) -> None:
        """The power goes: unsynced writes are lost and, if the lab owns the engine, it dies with them."""
        self.disk.cut()
        if self.power:
            self.power.cut()

    def boot_engine(self) -> None:
        if self.power:
            self.power.boot()
            self.engine = self.power.client()

    def restart_engine(self) -> None:
        """A clean stop and start of the engine: what the device's next power-on gives."""
        if self.power:
            self.power.stop()
            self.boot_engine()

    def drop_in(self) -> dict:
        """The device's own settings: a rate limit, so that a cut lands mid-download; when the
        engine goes down with the power, how the device restarts it (see tasks/portleak.py); a short
        health window; the port the sample shellhttpd publishes (compose reads it from
        `[compose_env]` only); and where its image's TUF roots are (written fresh, outside the power-cut mount, as
        /usr/lib/sota/tuf is read-only on a device)."""
        roots = self.work / "image-tuf"
        TufRepository(self.home).export_roots(roots)
        pacman = {"download_rate_limit": RATE_LIMIT, "health_window": HEALTH_WINDOW_S}
        if self.power:
            pacman["engine_restart_command"] = [
                sys.executable, str(ROOT / "scripts" / "lib" / "private_engine.py"), "restart", str(self.power.folder)]
        return {"pacman": pacman, "compose_env": {"SHELLHTTPD_PORT": str(SHELLHTTPD_PORT)},
                "storage": {"uptane_metadata_path": str(roots)}}

    def versions(self, scenario: str) -> tuple[int | None, int]:
        start, target = SCENARIOS[scenario]
        return (None if start is None else start + self.offset), target + self.offset

    def end_version(self, scenario: str) -> int:
        """The version the device must end on: the target's, or the start's if the target fails."""
        start, target = self.versions(scenario)
        return start if scenario in FAILING else target

    def fresh_device(self) -> Device:
        """Take the old device's apps down, wipe the engine, register a new device."""
        clean_engine(self.engine)
        sota = self.devices_dir / "sota"
        if sota.exists():
            shutil.rmtree(sota)
            sync_tree(self.devices_dir)
        drop_in = self.work / "powercut.toml"
        drop_in.write_text(tomli_w.dumps(self.drop_in()))
        name = f"powercut-{os.urandom(4).hex()}"
        done = subprocess.run(
            [str(BIN / "fioup-flow"), "register", "--factory", self.info["factory"], "--server", self.info["api"],
             "--token", self.info["registration_token"], "--ca", self.info["ca"], "--name", name,
             "--sota-dir", str(sota), "--tag", TAG, "--hwid", HWID], capture_output=True, text=True, timeout=120,
            env=device_env())
        if done.returncode != 0:
            raise RuntimeError(f"register failed: {done.stderr}")
        sync_tree(sota)
        self.device = Device(name, DeviceRecords(self.home).find(name)["uuid"], sota, drop_in)
        return self.device

    def bring_to(self, version: int | None) -> Device:
        """The device on `version` (None: a fresh device), with every file made durable."""
        if version is None or self.device is None:
            self.fresh_device()
        if version is not None and self.device.version() != version:
            done = self.device.run("apply", str(version))
            if done.returncode != 0 or self.device.version() != version:
                self.fresh_device()  # a device a failed cut left wedged: start it afresh
                done = self.device.run("apply", str(version))
                if done.returncode != 0:
                    raise RuntimeError(f"could not bring the device to version {version}: {done.stderr}")
        sync_tree(self.device.sota)
        return self.device


# --- one cut -----------------------------------------------------------------------------------------


@dataclass
class Cut:
    """One cut's replay key, its measurements and what went wrong."""

    seed: int
    scenario: str
    mode: str
    at: float  # seconds after start (random) or node index K (boundary); < 0: draw it from the seed
    node: str = ""
    boundaries: int = 0  # boundary mode: how many nodes the plan has
    refetched: int = 0  # bytes received before the cut, lost to it
    boot_seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)  # invariant -> what was wrong
    corrupt: int = 0
    lost_events: int = 0
    duplicated_events: int = 0
    stopped: dict[str, float] = field(default_factory=dict)  # target app -> seconds stopped after boot
    second_boot: str = ""  # a failed cut: how invariants 1-4 stand after an engine restart and one more boot
    running_after: float = 0.0  # seconds from boot until every app of the target ran
    engine_restarts: list[float] = field(default_factory=list)  # fioup-flow's restarts of the engine to
    # free a port it leaked: each from the engine's refusal to start until it answered again

    @property
    def converged(self) -> bool:
        return not self.failures


def plan_nodes(device: Device) -> list[str] | None:
    """The frozen plan's nodes in order, or None while there is none (reads only a settled store)."""
    path = store_path(device.sota / "flow")
    if not (path / MARKER).exists():
        return None
    with device.store() as store:
        plan = store.current_plan()
        return plan.order() if plan else None


def node_done(device: Device, node: str) -> bool:
    with device.store() as store:
        plan_id = store.current_plan_id()
        return plan_id is not None and store.record(plan_id, node).state == "done"


def wait(condition: Callable[[], bool], process: subprocess.Popen, timeout: float) -> None:
    """Poll `condition` until true, the process ended or `timeout` passed."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # noqa: BLE001 - a store caught mid-creation: look again
            pass
        time.sleep(0.03)


def kill_at(cut: Cut, device: Device, process: subprocess.Popen, started: float) -> None:
    """Wait for the cut's moment, then SIGKILL the update (mode random: a time; boundary: node K done)."""
    if cut.mode == "random":
        wait(lambda: time.monotonic() - started >= cut.at, process, cut.at + 1)
    else:
        nodes: list[str] = []
        wait(lambda: bool(nodes.extend(plan_nodes(device) or []) or nodes), process, 60)
        if nodes:
            cut.at = int(cut.at) % len(nodes)  # boundaries are counted round, so a long run takes each
            cut.node, cut.boundaries = nodes[int(cut.at)], len(nodes)
            wait(lambda: node_done(device, cut.node), process, 120)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # fioup-flow and whatever it runs: compose, too
    process.wait(timeout=30)


def apply_args(scenario: str, target: int) -> tuple[str, ...]:
    return (str(target), "--force") if scenario in FAILING else (str(target),)


def boot(device: Device, version: int, failing: tuple[int, float] | None = None) -> str | None:
    """What the device does after the power comes back; None, or why it did not get there.
    `failing`: (the failing target, when its run began): until that run was rolled back, the
    device applies the target again, as the cut came before the plan was frozen."""
    done = device.run("resume")
    if done.returncode not in (0, NO_UPDATE_IN_PROGRESS) + ((ROLLED_BACK,) if failing else ()):
        return f"resume exit {done.returncode}: {done.stderr.strip()[-300:]}"
    if failing and not failed_since(device.status(), *failing):
        done = device.run("apply", str(failing[0]), "--force")
        if done.returncode != ROLLED_BACK:
            return f"apply after boot exit {done.returncode}, not {ROLLED_BACK}: {done.stderr.strip()[-300:]}"
    elif not failing and device.version() != version:  # the cut came before the plan was frozen (or undid it)
        done = device.run("apply", str(version))
        if done.returncode != 0:
            return f"apply after boot exit {done.returncode}: {done.stderr.strip()[-300:]}"
    return None


def failed_since(status: dict, target: int, since: float) -> dict | None:
    """The history entry of the update to `target` that was rolled back after `since`, if any."""
    return next((e for e in status.get("history", []) if e["version"] == target and e["outcome"] == "rolled-back"
                 and e["ended"] >= since), None)


@dataclass(frozen=True)
class Baseline:
    """An uninterrupted run of a scenario: how long it took, and how long each app that runs
    before and after it stayed stopped (0 for an app it left alone)."""

    seconds: float
    stopped: dict[str, float]


def kept_apps(scenario: str) -> set[str]:
    """The apps that run before and after the scenario's update: the ones it could leave stopped."""
    start, target = SCENARIOS[scenario]
    return set(RELEASES[start][0]) & set(RELEASES[target][0]) if start else set()


def apps_down(engine: docker.DockerClient, apps: set[str]) -> set[str]:
    """The apps whose containers are not all running."""
    down = set()
    for app in apps:
        containers = engine.containers.list(all=True, filters={"label": f"com.docker.compose.project={app}"})
        if not containers or any(c.status != "running" for c in containers):
            down.add(app)
    return down


def container_events(engine: docker.DockerClient, apps: set[str], since: float) -> dict[str, dict[str, list[float]]]:
    """Per app, when its containers started and died after `since`, from the engine's event log."""
    seen: dict[str, dict[str, list[float]]] = {app: {"start": [], "die": []} for app in apps}
    for event in engine.events(since=int(since) - 1, until=int(time.time()) + 1, decode=True,
                               filters={"type": "container", "event": ["start", "die"]}):
        at = event["timeNano"] / 1e9
        app = event["Actor"]["Attributes"].get("com.docker.compose.project")
        if at >= since and app in seen:
            seen[app][event["Action"]].append(at)
    return seen


def stopped_windows(seen: dict[str, dict[str, list[float]]], since: float, down: set[str]) -> dict[str, float]:
    """Per app, from when it stopped (`since` for an app in `down`) to when its containers last
    started; 0 if it never stopped, inf if it stopped and never started again."""
    windows = {}
    for app, times in seen.items():
        stopped = since if app in down else min(times["die"], default=None)
        starts = [at for at in times["start"] if stopped is not None and at >= stopped]
        windows[app] = 0.0 if stopped is None else (max(starts) - stopped if starts else float("inf"))
    return windows


def uninterrupted(lab: Lab, scenario: str, say: Callable[[str], None]) -> Baseline:
    start, target = lab.versions(scenario)
    device = lab.bring_to(start)
    began, wall = time.monotonic(), time.time()
    done = device.run("apply", *apply_args(scenario, target))
    seconds = time.monotonic() - began
    if done.returncode != (ROLLED_BACK if scenario in FAILING else 0):
        raise RuntimeError(f"{scenario}: the uninterrupted run failed: {done.stderr}")
    baseline = Baseline(seconds, stopped_windows(container_events(lab.engine, kept_apps(scenario), wall), wall, set()))
    stops = ", ".join(f"{app} stopped {w:.1f} s" for app, w in sorted(baseline.stopped.items())) or "no app stopped"
    say(f"{scenario}: an uninterrupted run takes {seconds:.1f} s ({stops})")
    return baseline


def run_cut(lab: Lab, cut: Cut, baselines: dict[str, Baseline], say: Callable[[str], None] = print) -> Cut:
    start, target = lab.versions(cut.scenario)
    if cut.scenario not in baselines:  # once per scenario
        baselines[cut.scenario] = uninterrupted(lab, cut.scenario, say)
    baseline = baselines[cut.scenario]
    if cut.mode == "random" and cut.at < 0:
        cut.at = round(random.Random(cut.seed).uniform(0, baseline.seconds), 3)
    device = lab.bring_to(start)
    end, failing = lab.end_version(cut.scenario), (target, time.time()) if cut.scenario in FAILING else None
    gets_at_start = len(registry_blob_gets(lab.home))
    process = device.start("apply", *apply_args(cut.scenario, target))
    kill_at(cut, device, process, time.monotonic())
    lab.cut()
    time.sleep(0.5)  # the registry logs the responses the kill cut short
    store = BlobStore(device.sota / "reset-apps")
    verified_at_cut = set(store.digests())
    gets = registry_blob_gets(lab.home)
    gets_at_cut = len(gets)
    kept_at_cut = {d: store.partial_size(d) for d, _ in gets[gets_at_start:] if d not in verified_at_cut}
    # bytes the device had received but lost to the cut: fetched once more after it
    cut.refetched = sum(max(0, sum(w for d, w in gets[gets_at_start:] if d == digest) - kept)
                        for digest, kept in kept_at_cut.items())
    try:  # which restarts the containers that were running, as their restart policy says; a panic on the
        lab.boot_engine()  # network database the cut left is recovered as fioup-flow's docker drop-in does
    except EngineDidNotStart as exc:  # anything else needs a person: the run cannot go on
        cut.failures["engine"] = f"the Docker engine did not start after the cut: {lab.power.last_words() or exc}"
        raise
    apps = set(RELEASES[end - lab.offset][0])
    down, began, wall = apps_down(lab.engine, apps), time.monotonic(), time.time()
    log_at = lab.power.log_size() if lab.power else 0
    why = boot(device, end, failing)
    cut.engine_restarts = lab.power.restarts_since(log_at) if lab.power else []
    cut.boot_seconds = time.monotonic() - began
    if why:
        cut.failures["boot"] = why
    seen = container_events(lab.engine, apps, wall)
    cut.stopped = stopped_windows(seen, wall, down)
    cut.running_after = max((max(times["start"]) - wall for times in seen.values() if times["start"]), default=0.0)
    check(lab, device, cut, end, verified_at_cut, gets_at_cut, kept_at_cut, failing)
    check_stopped(cut, baseline)
    if not cut.converged and lab.power:  # was anything lost, or does the next power-on get there?
        lab.restart_engine()
        again = Cut(cut.seed, cut.scenario, cut.mode, cut.at)
        if why := boot(device, end, failing):
            again.failures["boot"] = why
        check(lab, device, again, end, verified_at_cut, gets_at_cut, kept_at_cut, failing)
        cut.second_boot = "converged" if again.converged else "; ".join(f"{k}: {v}" for k, v in again.failures.items())
    return cut


def check_stopped(cut: Cut, baseline: Baseline) -> None:
    """Invariant 5: after boot, no app stays stopped much longer than in the uninterrupted run. An
    engine restart that freed a leaked port is Docker's time, not the update's: it is added."""
    factor, margin = WINDOW_SLACK
    restarts = sum(cut.engine_restarts)
    late = [f"{app} stopped {cut.stopped[app]:.1f} s after boot, {limit:.1f} s uninterrupted"
            + (f" (+{restarts:.1f} s of engine restart)" if restarts else "")
            for app, limit in sorted(baseline.stopped.items())
            if cut.stopped[app] > limit * factor + margin + restarts]
    if late:
        cut.failures["5-stopped"] = "; ".join(late)


def check(lab: Lab, device: Device, cut: Cut, target: int, verified_at_cut: set[str], gets_at_cut: int,
          kept_at_cut: dict[str, int], failing: tuple[int, float] | None = None) -> None:
    """The invariants, each failure written into `cut.failures`; `target` is the version to end on."""
    status = settled_status(device)
    wanted = lab.uris[target]
    problems = []
    if (status.get("current") or {}).get("version") != target:
        problems.append(f"on version {(status.get('current') or {}).get('version')}, not {target}")
    if failing and failing[0] not in [b["version"] for b in status.get("bad_targets", [])]:
        problems.append(f"version {failing[0]} is not marked bad")
    for app in status.get("apps", []):
        if app["state"] != "running" or app["uri"] != wanted.get(app["name"]):
            services = ", ".join(f"{x['name']} {x['state']}/{x['health'] or '-'} ({x['status']})" for x in app["services"])
            problems.append(f"{app['name']} {app['state']} [{services}] {app['uri'].rsplit('@', 1)[-1][:19]}")
    running = {c.labels.get("com.docker.compose.project") for c in lab.engine.containers.list()}
    problems += [f"{app} not running: {container_story(lab.engine, app)}" for app in wanted if app not in running]
    problems += [f"dropped {app} still running" for app in running - set(wanted) if app]
    if problems:
        cut.failures["1-target"] = "; ".join(problems)

    store = BlobStore(device.sota / "reset-apps")
    corrupt = [d for d in store.digests() if not store.verify(d)]
    cut.corrupt = len(corrupt)
    if corrupt:
        cut.failures["2-blobs"] = f"{len(corrupt)} corrupt: {', '.join(d[:19] for d in corrupt)}"

    check_events(lab, device, cut, failed_since(status, *failing) if failing else None)

    after = registry_blob_gets(lab.home)[gets_at_cut:]
    again = sorted({d for d, _ in after} & verified_at_cut)
    if again:
        cut.failures["4-refetch"] = f"verified before the cut, fetched again: {', '.join(d[:19] for d in again)}"
    for digest, kept in kept_at_cut.items():  # a partial download resumes from what was kept
        resumed = sum(written for d, written in after if d == digest)
        if store.has(digest) and resumed > store.path(digest).stat().st_size - kept:
            cut.failures["4-refetch"] = f"{digest[:19]}: {kept} bytes kept at the cut, yet {resumed} fetched after"


def settled_status(device: Device, timeout: float = 20.0) -> dict:
    """`status --json` once every app runs, or after `timeout`: after the engine's own boot an app
    the update left alone may still be coming up under its restart policy when resume returns."""
    deadline = time.monotonic() + timeout
    while True:
        status = device.status()
        if all(app["state"] == "running" for app in status.get("apps", [])) or time.monotonic() > deadline:
            return status
        time.sleep(1)


def container_story(engine: docker.DockerClient, app: str) -> str:
    """What the engine says of an app's containers: state, exit code, error, last log line."""
    stories = []
    for container in engine.containers.list(all=True, filters={"label": f"com.docker.compose.project={app}"}):
        state = container.attrs["State"]
        last = container.logs(tail=1).decode(errors="replace").strip()
        stories.append(f"{container.name} {state['Status']} exit {state['ExitCode']} {state.get('Error') or ''}"
                       f" restarts {container.attrs.get('RestartCount')} log {last!r}")
    return "; ".join(stories) or "no container"


def check_events(lab: Lab, device: Device, cut: Cut, rolled_back: dict | None = None) -> None:
    """Invariant 3: the final plan's events (of its last attempt), each once, in the protocol's order;
    and, for an update `rolled_back` (its history entry), its last attempt's too, the last unsuccessful."""
    with device.store() as store:
        history = store.history(1)
    if not history:
        cut.failures["3-events"] = "no finished update in the device's history"
        return
    if rolled_back is None and cut.scenario in FAILING:
        cut.failures["3-events"] = "no rolled-back update in the device's history"
        return
    problems = []
    for entry, success in ((history[0], True), *(((rolled_back, False),) if rolled_back else ())):
        events = [e for e in DeviceRecords(lab.home).events(device.uuid)
                  if e["event"]["correlationId"] == entry["correlation_id"]]
        ids = [e["id"] for e in events]
        cut.duplicated_events += len(ids) - len(set(ids))
        kinds = [e["eventType"]["id"] for e in events]
        lost = len(set(UPDATE_EVENTS) - set(kinds))
        cut.lost_events += lost
        if len(ids) != len(set(ids)) or lost or list(dict.fromkeys(kinds)) != list(UPDATE_EVENTS) \
                or events[-1]["event"]["success"] is not success:
            problems.append(f"{entry['outcome']} update {entry['plan_id']}: got {kinds}")
    if problems:
        cut.failures["3-events"] = "; ".join(problems)


# --- a run of many cuts -------------------------------------------------------------------------------


def plan_cuts(count: int, seed: int, mode: str, at: float | None, scenario: str | None) -> list[Cut]:
    """The cuts of a run, each with a seed of its own so that one can be replayed alone.

    Boundary mode without `at` takes the scenarios in turn and, in each, the node boundaries in
    plan order: 4 x (nodes per plan) cuts cut after every node of every scenario.
    """
    if mode == "boundary" and at is None:
        names = [scenario] if scenario else sorted(SCENARIOS)
        return [Cut(seed, names[i % len(names)], mode, float(i // len(names))) for i in range(count)]
    rng = random.Random(seed)
    cuts = []
    for _ in range(count):
        cut_seed = seed if count == 1 else rng.randrange(1 << 30)
        own = random.Random(cut_seed)
        name = scenario or own.choice(sorted(SCENARIOS))
        # without --at, drawn from the cut's seed once the run's duration or plan is known
        cuts.append(Cut(cut_seed, name, mode, -1.0 if at is None else at))
    return cuts


def run_cuts(lab: Lab, cuts: list[Cut], say: Callable[[str], None] = print) -> list[Cut]:
    baselines: dict[str, Baseline] = {}
    for index, cut in enumerate(cuts, 1):
        try:
            run_cut(lab, cut, baselines, say)
        except Exception as exc:  # noqa: BLE001 - a harness error on one cut is a failed cut, not the end
            cut.failures["harness"] = f"{exc.__class__.__name__}: {exc}"
        if not cut.converged:  # whatever it left behind, the next cut starts on a clean engine and device
            lab.restart_engine()
            lab.device = None
        where = f"node {int(cut.at)}/{cut.boundaries} {cut.node}" if cut.mode == "boundary" else f"{cut.at:.2f} s"
        line = (f"[{index}/{len(cuts)}] {cut.scenario:10} cut at {where}: apps running {cut.running_after:.1f} s "
                f"after boot, update done {cut.boot_seconds:.1f} s, re-fetched {cut.refetched} B")
        say(line + (f", engine restarted to free a leaked port ({', '.join(f'{w:.1f} s' for w in cut.engine_restarts)})"
                    if cut.engine_restarts else "")
            + ("" if cut.converged else "  FAILED"))
        if cut.second_boot:
            say(f"  after an engine restart and one more boot: {cut.second_boot}")
        for name, what in cut.failures.items():
            say(f"  FAIL {name}: seed={cut.seed} scenario={cut.scenario} mode={cut.mode} at={cut.at}: {what}"
                f"\n  replay: scripts/powercut --cuts 1 --seed {cut.seed} --mode {cut.mode} --at {cut.at}"
                f" --scenario {cut.scenario}")
    return cuts


def summary(cuts: list[Cut]) -> list[str]:
    names = ["engine", "boot", "1-target", "2-blobs", "3-events", "4-refetch", "5-stopped", "harness"]
    refetched = [c.refetched for c in cuts] or [0]
    boots = [c.boot_seconds for c in cuts if c.converged] or [0.0]
    running = [c.running_after for c in cuts if c.converged] or [0.0]
    stopped = [c.stopped[app] for c in cuts for app in kept_apps(c.scenario) if app in c.stopped] or [0.0]
    converged = sum(c.converged for c in cuts)
    return [
        "failures per invariant: " + ", ".join(f"{n} {sum(n in c.failures for c in cuts)}" for n in names),
        (f"corrupt blobs {sum(c.corrupt for c in cuts)}, lost events {sum(c.lost_events for c in cuts)}, "
         f"duplicated events {sum(c.duplicated_events for c in cuts)}"),
        f"bytes received before the cut and lost (fetched again): median {statistics.median(refetched):.0f}, max {max(refetched)}",
        (f"boot to every app running: median {statistics.median(running):.1f} s, max {max(running):.1f} s; "
         f"boot to update done: median {statistics.median(boots):.1f} s"),
        f"longest an app that runs before and after stayed stopped after boot: {max(stopped):.1f} s",
        (f"cuts after which fioup-flow restarted the engine to free a port it leaked: "
         f"{sum(bool(c.engine_restarts) for c in cuts)} (refusal to engine back: max "
         f"{max((w for c in cuts for w in c.engine_restarts), default=0.0):.1f} s)"),
        (f"failed cuts that converged after an engine restart and one more boot: "
         f"{sum(c.second_boot == 'converged' for c in cuts)}/{len(cuts) - converged}"),
        f"converged {converged}/{len(cuts)}",
    ]


# --- network faults -------------------------------------------------------------------------------


def point_gateway_at(device: Device, port: int) -> None:
    cfg = device.sota / "sota.toml"
    data = tomllib.loads(cfg.read_text())
    data["tls"]["server"] = f"https://127.0.0.1:{port}"
    cfg.write_text(tomli_w.dumps(data))


# each a FaultProxy setting, on the links to both the gateway and the registry, except
# `server_errors`: the next N requests to the gateway and the api (tokens) get 503 from the factory
# (through TLS the proxy cannot answer for the server)
NETWORK_FAULTS = [
    {"reset_probability": 0.02},
    {"reset_after": 3_000_000},
    {"stall_after": 1_000_000, "stall_seconds": 4.0},
    {"close_on_accept": 3},
    {"reset_probability": 0.005, "rate": 4_000_000},
    {"server_errors": 3},
]


@dataclass
class Trip:
    """One update through faulty links, and what it cost."""

    scenario: str
    faults: dict
    converged: bool = False
    boots: int = 0
    clean_bytes: int = 0  # what the registry link carried for an uninterrupted run of the scenario
    extra_bytes: int = 0  # what it carried beyond that for this run

    @property
    def extra_share(self) -> float:
        return self.extra_bytes / self.clean_bytes if self.clean_bytes else 0.0


def plan_trips(count: int, seed: int) -> list[Trip]:
    rng = random.Random(seed)
    return [Trip(rng.choice(sorted(set(SCENARIOS) - FAILING)), rng.choice(NETWORK_FAULTS)) for _ in range(count)]


def run_network(lab: Lab, trips: list[Trip], proxies: tuple[FaultProxy, FaultProxy],
                say: Callable[[str], None] = print) -> list[Trip]:
    """Updates through faulty links, each given up to three boots (what a daemon's next rounds would do)."""
    gateway, registry = proxies
    clean: dict[str, int] = {}
    for index, trip in enumerate(trips, 1):
        start, target = lab.versions(trip.scenario)
        if trip.scenario not in clean:
            device = lab.bring_to(start)
            point_gateway_at(device, gateway.port)
            before = registry.stats.bytes_down
            device.run("apply", str(target))
            clean[trip.scenario] = registry.stats.bytes_down - before
        device = lab.bring_to(start)
        point_gateway_at(device, gateway.port)
        before = registry.stats.bytes_down
        link_faults = {k: v for k, v in trip.faults.items() if k != "server_errors"}
        for proxy in proxies:
            proxy.set(**link_faults)
        Faults(lab.home).set(http_errors=trip.faults.get("server_errors", 0))
        try:
            device.run("apply", str(target), timeout=120)
            trip.boots = 1
            while trip.boots < 3 and device.version() != target:
                trip.boots += 1
                boot(device, target)
        finally:
            for proxy in proxies:
                proxy.clear()
            Faults(lab.home).clear()
        trip.clean_bytes = clean[trip.scenario]
        trip.extra_bytes = registry.stats.bytes_down - before - trip.clean_bytes
        trip.converged = device.version() == target
        say(f"[{index}/{len(trips)}] {trip.scenario:10} faults {trip.faults}: "
            f"{'ok' if trip.converged else 'FAILED'}, {trip.boots} boot(s), {trip.extra_bytes} bytes "
            f"({trip.extra_share:.1%}) more than the {trip.clean_bytes} of an uninterrupted run")
    return trips


def network_summary(trips: list[Trip]) -> list[str]:
    extra = [t.extra_bytes for t in trips] or [0]
    shares = [t.extra_share for t in trips] or [0.0]
    total = sum(t.extra_bytes for t in trips) / max(1, sum(t.clean_bytes for t in trips))
    return [
        (f"extra registry bytes over an uninterrupted run: median {statistics.median(extra):.0f}, max {max(extra)} "
         f"(median {statistics.median(shares):.1%}, max {max(shares):.1%} of the update; {total:.1%} over all)"),
        f"converged {sum(t.converged for t in trips)}/{len(trips)}",
    ]


@contextlib.contextmanager
def proxied_releases(home: FactoryHome, registry_port: int, offset: int = 10) -> Iterator[dict[int, dict[str, str]]]:
    """RELEASES published as versions offset+1.. with the registry named by `registry_port` (a
    proxy's) in their app URIs and in hub-creds; the factory's own registry address comes back after."""
    state = home.load_state()
    proxied = dict(state, registry_host=f"127.0.0.1:{registry_port}")
    # publish names the registry by ports.registry: only while publishing, so the Targets' URIs name the proxy
    home.save_state(dict(proxied, ports=dict(state["ports"], registry=registry_port)))
    try:
        uris = publish_releases(home.root, offset=offset)
        home.save_state(proxied)
        yield uris
    finally:
        home.save_state(state)  # the other releases and their hub-creds name the registry itself


@contextlib.contextmanager
def faulty_links(home: FactoryHome, seed: int, lifetime: float,
                 offset: int = 10) -> Iterator[tuple[tuple[FaultProxy, FaultProxy], dict[int, dict[str, str]]]]:
    """A fault proxy in front of the gateway and one in front of the registry, and RELEASES
    published through the latter: ((gateway proxy, registry proxy), their app URIs)."""
    ports = home.load_state()["ports"]
    with FaultProxy(ports["gateway"], lifetime=lifetime, seed=seed) as gateway, \
            FaultProxy(ports["registry"], lifetime=lifetime, seed=seed) as registry, \
            proxied_releases(home, registry.port, offset=offset) as uris:
        yield (gateway, registry), uris


# --- the command ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cuts", type=int, default=10)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument("--mode", choices=["random", "boundary"], default="random",
                        help="random: a moment uniform over the update; boundary: after each node in turn")
    parser.add_argument("--network", action="store_true", help="network faults instead of power cuts")
    parser.add_argument("--at", type=float, help="replay: seconds after start (random) or node index (boundary)")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), help="replay: this scenario only")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fioup-flow-powercut"))
    parser.add_argument("--keep-engine", action="store_true",
                        help="cut fioup-flow's storage only; the Docker engine and its containers live on")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the way Ctrl-C does: clean up
    print(f"powercut: seed {args.seed}, mode {'network' if args.network else args.mode}, work {args.work}")
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "docker" / "pool-octet").unlink(missing_ok=True)  # chosen afresh: another engine may hold it now
    with PrivateEngine(args.work / "docker") as engine:
        os.environ["DOCKER_HOST"] = engine.host
        home = args.work / "factory"
        info = json.loads(factory_cli("up", "--home", str(home)))
        os.environ["SSL_CERT_FILE"] = info["ca_bundle"]  # the registry's CA, as in a system store
        try:
            lab_home = FactoryHome(home.resolve())
            if args.network:
                return network_main(args, lab_home, info)
            uris = publish_releases(home)
            with PowercutMount(args.work / "backing", args.work / "mnt") as disk:
                lab = Lab(lab_home, info, engine.client(), disk.mount, args.work, uris, disk,
                          power=None if args.keep_engine else engine)
                cuts = run_cuts(lab, plan_cuts(args.cuts, args.seed, args.mode, args.at, args.scenario))
                clean_engine(lab.engine)
            for line in summary(cuts):
                print(line)
            return 0 if all(c.converged for c in cuts) else 1
        finally:
            factory_cli("down", "--home", str(home))


def network_main(args: argparse.Namespace, home: FactoryHome, info: dict) -> int:
    """Run updates through a fault proxy in front of the gateway and one in front of the registry."""
    with faulty_links(home, args.seed, lifetime=3600) as (proxies, uris):
        devices = args.work / "net-devices"
        devices.mkdir(exist_ok=True)
        lab = Lab(home, info, docker.DockerClient(base_url=os.environ["DOCKER_HOST"]), devices, args.work, uris,
                  offset=10)
        trips = run_network(lab, plan_trips(args.cuts, args.seed), proxies)
        clean_engine(lab.engine)
    for line in network_summary(trips):
        print(line)
    return 0 if all(t.converged for t in trips) else 1


if __name__ == "__main__":
    sys.exit(main())
