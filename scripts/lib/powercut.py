"""Real updates through real power cuts: the harness behind `scripts/powercut`.

Each cut runs a real `fioup-flow apply` whose whole sota dir lives on a power-cut filesystem
(tests/faults/powercutfs.py), stops it at a chosen moment (uniform over the update's duration,
or, in boundary mode, right after the K-th node finished, from its progress lines), drops every
write the disk did not keep (`--disk synced`: exactly what was synced; `--disk reorder`: that,
plus what a real disk may keep of the rest, see powercutfs), then "boots" (`fioup-flow resume`,
or `apply` again when the cut came before the plan was frozen) and checks, judging by the world
(scripts/lib/judge.py), never by what fioup-flow says of itself:

1. converged: each service of each app of the Target runs a container whose image ID is the one
   the Target's app pins (read from the factory registry's storage), no container of another
   image of those apps runs, no app the Target dropped runs, the sample app serves the
   version's page, and the device's own record names the Target; in the failing scenario,
   whose Target crash-loops, the device is back on its start version after a rollback, and the
   Target is marked bad in its store;
2. every blob in the store verifies against its digest;
3. the gateway holds exactly the events the frozen plan names, ids and order, each once; the
   events the device sent again are counted from the gateway's `deliveries` log (a resend is
   allowed, a second record is not) (failing scenario: the failed
   update's events too, a prefix of its plan's, the last `EcuInstallationCompleted` success false);
4. no blob that was verified on disk after the cut is downloaded again, and a partial resumes
   from what the cut kept (the registry's log). Per cut it reports the bytes the device had
   received but lost to the cut (a partial is synced every SYNC_EVERY bytes: up to 8 MiB);
5. no app that runs before and after the update stays stopped, from the moment the device boots,
   longer than it was stopped in an uninterrupted run of the same update (from the engine's own
   event log), give or take WINDOW_SLACK for a noisy machine.

The cut freezes fioup-flow with everything it started (compose) and the Docker engine with
everything it runs (dockerd, containerd, shims, port proxies, containers) in one instant
(private_engine.Freeze: a cgroup freezer), then drops the disk's unsynced writes, checks that
nothing frozen ran a step meanwhile or escaped the freeze, and kills them all. Boot starts the
engine again on the same data, and it restarts the containers their restart policy says to
(`--keep-engine` leaves the engine running instead). Not modelled: the engine's own files cannot
live on the power-cut mount (dockerd needs overlayfs on a real filesystem), so the engine keeps
every write it made.

The harness never touches the device's disk while an update runs: it follows fioup-flow's
progress lines (stderr) and reads the checkpoint store from the mount's backing folder, the
durable state, through a copy (fioup_flow/storeview.py). Each cut records what it hit: the
update before its plan was frozen, mid-update, finishing (plan done, process still up), or
nothing (the update had ended): the last are reported apart and not counted in `converged K/N`.
Setup (registration, reaching the start version) is fsynced file by file before the cut run,
as an idle device's write-back would have done.

`--network` runs updates through FaultProxy (tests/faults/netproxy.py) in front of both the
gateway and the registry instead: the factory's `registry_host` is pointed at a proxy before
the network releases are published, so their app URIs (and hub-creds) name the proxy. Each
fault must be seen to fire (the proxies' and the factory's counters) and the update judged
converged by the world, as above.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker
import tomli_w

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from faults.netproxy import FaultProxy  # noqa: E402
from faults.powercutfs import MODES as DISK_MODES  # noqa: E402
from faults.powercutfs import PowercutMount  # noqa: E402
from support import SHELLHTTPD_PORT, clean_engine, new_device, registry_blob_gets  # noqa: E402
from support import sample_page as served_page  # noqa: E402

from fioup_flow.checkpoint import store_path  # noqa: E402
from fioup_flow.factory.devices import DeviceRecords  # noqa: E402
from fioup_flow.factory.faults import Faults  # noqa: E402
from fioup_flow.factory.home import FactoryHome  # noqa: E402
from fioup_flow.factory.images import host_arch  # noqa: E402
from fioup_flow.factory.tufrepo import TufRepository  # noqa: E402
from fioup_flow.graph import Plan  # noqa: E402
from fioup_flow.installed import current_target  # noqa: E402
from fioup_flow.store import BlobStore  # noqa: E402
from fioup_flow.storeview import StoreView  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts" / "lib"))
from judge import (  # noqa: E402
    SAMPLE_APP,
    EventVerdict,
    Expected,
    judge_events,
    judge_failed_events,
    pinned_images,
    running_containers,
    sample_page,
    world_problems,
)
from private_engine import EngineDidNotStart, Freeze, PrivateEngine, process_tree  # noqa: E402

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
NO_UPDATE_IN_PROGRESS = 24
HEALTH_WINDOW_S = 3  # the device's `pacman.health_window`: every update waits it out, the default's 15 s would
# make most cuts land in it
# invariant 5 compares two single measurements of compose runs on a busy machine: an app may stay
# stopped up to this factor, plus this many seconds, longer than in the uninterrupted run
WINDOW_SLACK = 1.5, 1.0
RATE_LIMIT = "20M"
SETTLE_S = 20.0  # after boot, how long an app may take to come up under its restart policy
# what a cut hit (see the module docstring); the last hit nothing
HITS = ("before the plan", "mid-update", "finishing", "after the end")
NOTHING = HITS[-1]
PROGRESS_DONE = re.compile(r"^done\s+\[(\d+)/(\d+)\]\s+(\S+)")
PROGRESS_NODES = re.compile(r"^Updating to .*: (\d+) nodes$")


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


def settle(problems: Callable[[], list[str]], timeout: float = SETTLE_S) -> list[str]:
    """`problems()` once it is empty, or as it stands after `timeout` (apps still coming up)."""
    deadline = time.monotonic() + timeout
    while (found := problems()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


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
    """A registered device whose sota dir is `sota`; `drop_in` holds the harness's config;
    `durable` is where the power-cut disk keeps the sota dir's durable state (None: no such disk)."""

    name: str
    uuid: str
    sota: Path
    drop_in: Path
    durable: Path | None = None

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

    def start(self, *args: str) -> Update:
        return Update(subprocess.Popen(self.argv(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       stdin=subprocess.DEVNULL, env=device_env(), text=True,
                                       start_new_session=True))  # a Ctrl-C of the harness is not the power

    def store(self) -> StoreView:
        """The checkpoint store, read without touching the device's disk (its durable state)."""
        return StoreView(store_path((self.durable or self.sota) / "flow"))

    def version(self) -> int | None:
        """The version the device's own record (the commit node's file) names."""
        current = current_target(self.sota / "flow")
        return current.version if current else None


def device_env() -> dict[str, str]:
    return dict(os.environ, FIOUP_FLOW_RETRY_SECONDS="3")


class Update:
    """A running fioup-flow, followed from outside through its progress lines only."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.started = time.monotonic()
        self.total: int | None = None  # nodes of the plan, once it says
        self.finished = 0  # nodes done, as the last progress line counted them
        self.last_node = ""
        self.tail: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            line = line.rstrip()
            self.tail = (self.tail + [line])[-20:]
            if found := PROGRESS_NODES.match(line):
                self.total = int(found[1])
            elif found := PROGRESS_DONE.match(line):
                self.finished, self.total, self.last_node = int(found[1]), int(found[2]), found[3]

    def processes(self) -> set[int]:
        """fioup-flow and all it started (compose)."""
        return process_tree(self.process.pid)

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Poll `condition` until it holds (True), the process ended or `timeout` passed (False)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                self.reader.join(timeout=5)  # its last lines
                return condition()
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


class PlanCatcher:
    """Every plan the device freezes while it runs, read from its durable store every 0.1 s: the
    plan is deleted from the store when the update finishes, and invariant 3 needs its events."""

    def __init__(self, view: StoreView) -> None:
        self.view = view
        self.plans: dict[str, Plan] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> PlanCatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def look(self) -> str | None:
        """The plan in progress now (caught, if new), or None."""
        plan_id = self.view.current_plan_id()
        if plan_id and plan_id not in self.plans and (plan := self.view.plan(plan_id)):
            self.plans[plan_id] = plan
        return plan_id

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            self.look()


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
    expected: dict[int, Expected] = field(default_factory=dict)

    def expect(self, version: int) -> Expected:
        """What the world must show once the device runs `version` (from the registry's storage)."""
        if version not in self.expected:
            apps, _ = RELEASES[version - self.offset]
            images = {app: pinned_images(self.home, uri, host_arch()) for app, uri in self.uris[version].items()}
            page = sample_page(apps[SAMPLE_APP]) if SAMPLE_APP in apps else None
            self.expected[version] = Expected(version, images, page)
        return self.expected[version]

    def world_problems(self, device: Device, version: int) -> list[str]:
        """Invariant 1: what differs from `version` in the engine, the sample app and the device's record."""
        problems = world_problems(self.expect(version), running_containers(self.engine), served_page)
        if device.version() != version:
            problems.append(f"the device's own record names version {device.version()}")
        return problems

    def cut(self, update: Update, cut: Cut) -> None:
        """The power goes: fioup-flow, compose and (if the lab owns it) the engine are frozen in one
        instant, the disk keeps what it keeps, then all of them die."""
        def everything() -> set[int]:
            return update.processes() | (self.power.processes() if self.power else set())

        with Freeze(f"cut-{os.getpid()}", everything) as frozen:
            cut.running = update.process.poll() is None  # frozen: it cannot end now
            cut.kept = self.disk.cut(cut.disk_seed if self.disk.mode == "reorder" else None)
            ran, escaped = frozen.ran(), frozen.escaped()
            cut.frozen, cut.late, cut.freezer = len(frozen.pids), len(frozen.late), frozen.how
            if frozen.stuck:  # which one the freezer could not hold is not told: where each waited
                cut.stuck = "; ".join(sorted(set(frozen.stuck.values())))
            if ran or escaped:
                cut.failures["harness"] = (f"the cut did not stop everything at once: ran after the freeze "
                                           f"{_names(ran)}; escaped it {_names(escaped)}")
        update.process.wait(timeout=30)
        update.reader.join(timeout=10)
        if self.power:
            self.power.forget_run_state()

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
        `[compose_env]` only); and where its image's TUF roots are (written fresh, outside the
        power-cut mount, as /usr/lib/sota/tuf is read-only on a device)."""
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
        registered = new_device(self.info, sota, "--tag", TAG, "--hwid", HWID)  # the one way tests register
        sync_tree(sota)
        durable = self.disk.backing / sota.relative_to(self.disk.mount) if self.disk else None
        self.device = Device(registered.name, DeviceRecords(self.home).find(registered.name)["uuid"], sota, drop_in,
                             durable)
        return self.device

    def bring_to(self, version: int | None) -> Device:
        """The device on `version` (None: a fresh device), with every file made durable."""
        if version is None or self.device is None:
            self.fresh_device()
        if version is not None and (self.device.version() != version or self.world_problems(self.device, version)):
            done = self.device.run("apply", str(version))
            if done.returncode != 0 or self.world_problems(self.device, version):
                self.fresh_device()  # a device a failed cut left wedged: start it afresh
                done = self.device.run("apply", str(version))
                if done.returncode != 0:
                    raise RuntimeError(f"could not bring the device to version {version}: {done.stderr}")
        sync_tree(self.device.sota)
        return self.device


def _names(pids: set[int]) -> str:
    """Processes by pid and command, for a report."""
    names = []
    for pid in sorted(pids):
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            names.append(f"{pid} {command}")
    return "[" + ", ".join(names) + "]" if pids else "none"


# --- one cut -----------------------------------------------------------------------------------------


@dataclass
class Cut:
    """One cut's replay key, its measurements and what went wrong."""

    seed: int
    scenario: str
    mode: str
    at: float  # seconds after start (random) or node index K (boundary); < 0: draw it from the seed
    disk: str = "synced"
    node: str = ""
    boundaries: int = 0  # boundary mode: how many nodes the plan has
    hit: str = ""  # one of HITS
    running: bool = False  # fioup-flow still ran when the power went
    frozen: int = 0  # processes the cut froze in one instant
    late: int = 0  # of them, container processes runc was moving out of the freezer: frozen right after
    freezer: str = ""  # how (cgroup freezer, SIGSTOP)
    stuck: str = ""  # the freezer did not settle: where its processes waited (name, state, wchan)
    kept: str = ""  # reorder disk: what it kept beyond the synced state
    refetched: int = 0  # bytes received before the cut, lost to it
    boot_seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)  # invariant -> what was wrong
    corrupt: int = 0
    events: EventVerdict = field(default_factory=EventVerdict)
    stopped: dict[str, float] = field(default_factory=dict)  # target app -> seconds stopped after boot
    second_boot: str = ""  # a failed cut: how invariants 1-4 stand after an engine restart and one more boot
    running_after: float = 0.0  # seconds from boot until every app of the target ran
    engine_restarts: list[float] = field(default_factory=list)  # fioup-flow's restarts of the engine to
    # free a port it leaked: each from the engine's refusal to start until it answered again
    networks_moved: bool = False  # the engine started only once the drop-in's script moved its network database aside

    @property
    def converged(self) -> bool:
        return not self.failures

    @property
    def disk_seed(self) -> int:
        """The reorder disk's seed for this cut: fixed by the cut's replay key."""
        return random.Random(f"{self.seed}:{self.scenario}:{self.mode}:{self.at}").randrange(1 << 30)

    @property
    def replay(self) -> str:
        return (f"scripts/powercut --cuts 1 --seed {self.seed} --mode {self.mode} --at {self.at} "
                f"--scenario {self.scenario} --disk {self.disk}")


def wait_for_the_moment(cut: Cut, update: Update) -> None:
    """Until the cut's moment (random: a time; boundary: the K-th node done), or the update's end."""
    if cut.mode == "random":
        update.wait_until(lambda: time.monotonic() - update.started >= cut.at, cut.at + 1)
        return
    if not update.wait_until(lambda: update.total is not None, 60):
        cut.failures["harness"] = "boundary mode: the update never said how many nodes its plan has"
        return
    boundary = int(cut.at) % update.total  # boundaries are counted round, so a long run takes each
    cut.at, cut.boundaries = float(boundary), update.total
    if update.wait_until(lambda: update.finished > boundary, 120):
        cut.node = update.last_node
    else:
        cut.failures["harness"] = (f"boundary {boundary} never reached: the update ended after "
                                   f"{update.finished} of {update.total} nodes")


def what_was_hit(cut: Cut, plans: PlanCatcher) -> str:
    """Whether the cut hit a running update, and where (see HITS), from the durable store."""
    if not cut.running:
        return NOTHING
    if plans.look():
        return "mid-update"
    return "finishing" if plans.plans else "before the plan"


def apply_args(scenario: str, target: int) -> tuple[str, ...]:
    return (str(target), "--force") if scenario in FAILING else (str(target),)


def boot(device: Device, version: int, failing: tuple[int, float] | None = None) -> str | None:
    """What the device does after the power comes back; None, or why it did not get there.
    `failing`: (the failing target, when its run began): until that run was rolled back, the
    device applies the target again, as the cut came before the plan was frozen."""
    done = device.run("resume")
    if done.returncode not in (0, NO_UPDATE_IN_PROGRESS) + ((ROLLED_BACK,) if failing else ()):
        return f"resume exit {done.returncode}: {done.stderr.strip()[-300:]}"
    if failing and not failed_since(device.store().history(), *failing):
        done = device.run("apply", str(failing[0]), "--force")
        if done.returncode != ROLLED_BACK:
            return f"apply after boot exit {done.returncode}, not {ROLLED_BACK}: {done.stderr.strip()[-300:]}"
    elif not failing and device.version() != version:  # the cut came before the plan was frozen (or undid it)
        done = device.run("apply", str(version))
        if done.returncode != 0:
            return f"apply after boot exit {done.returncode}: {done.stderr.strip()[-300:]}"
    return None


def failed_since(history: list[dict], target: int, since: float) -> dict | None:
    """The history entry of the update to `target` that was rolled back after `since`, if any."""
    return next((e for e in history if e["version"] == target and e["outcome"] == "rolled-back"
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


@dataclass(frozen=True)
class AtCut:
    """What the harness knew when the power went: for invariants 3 and 4."""

    verified: set[str]  # blobs committed on disk
    gets: int  # blob GETs the registry had answered
    kept: dict[str, int]  # digest -> bytes of a partial download the disk kept
    events: int  # records the gateway held for the device when the update began
    deliveries: int  # event batches it had received by then


def run_cut(lab: Lab, cut: Cut, baselines: dict[str, Baseline], say: Callable[[str], None] = print) -> Cut:
    start, target = lab.versions(cut.scenario)
    if cut.scenario not in baselines:  # once per scenario
        baselines[cut.scenario] = uninterrupted(lab, cut.scenario, say)
    baseline = baselines[cut.scenario]
    if cut.mode == "random" and cut.at < 0:
        cut.at = round(random.Random(cut.seed).uniform(0, baseline.seconds), 3)
    cut.disk = lab.disk.mode
    device = lab.bring_to(start)
    end, failing = lab.end_version(cut.scenario), (target, time.time()) if cut.scenario in FAILING else None
    records = DeviceRecords(lab.home)
    events_at_start, deliveries_at_start = len(records.events(device.uuid)), len(records.log(device.uuid, "deliveries"))
    gets_at_start = len(registry_blob_gets(lab.home))
    with PlanCatcher(device.store()) as plans:
        update = device.start("apply", *apply_args(cut.scenario, target))
        wait_for_the_moment(cut, update)
        lab.cut(update, cut)
        cut.hit = what_was_hit(cut, plans)
        at_cut = measure_at_cut(lab, device, cut, gets_at_start, events_at_start, deliveries_at_start)
        apps = set(RELEASES[end - lab.offset][0])
        boot_engine(lab, cut)
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
    check(lab, device, cut, end, at_cut, plans, failing)
    check_stopped(cut, baseline)
    if not cut.converged and lab.power:  # was anything lost, or does the next power-on get there?
        lab.restart_engine()
        again = Cut(cut.seed, cut.scenario, cut.mode, cut.at)
        with PlanCatcher(device.store()) as more:
            more.plans.update(plans.plans)
            if why := boot(device, end, failing):
                again.failures["boot"] = why
        check(lab, device, again, end, at_cut, more, failing)
        cut.second_boot = "converged" if again.converged else "; ".join(f"{k}: {v}" for k, v in again.failures.items())
    return cut


def measure_at_cut(lab: Lab, device: Device, cut: Cut, gets_at_start: int, events: int, deliveries: int) -> AtCut:
    """What the disk kept of the downloads, and what the registry had sent, when the power went."""
    time.sleep(0.5)  # the registry logs the responses the cut cut short
    store = BlobStore(device.sota / "reset-apps")
    verified = set(store.digests())
    gets = registry_blob_gets(lab.home)
    kept = {d: store.partial_size(d) for d, _ in gets[gets_at_start:] if d not in verified}
    # bytes the device had received but lost to the cut: fetched once more after it
    cut.refetched = sum(max(0, sum(w for d, w in gets[gets_at_start:] if d == digest) - size)
                        for digest, size in kept.items())
    return AtCut(verified, len(gets), kept, events, deliveries)


def boot_engine(lab: Lab, cut: Cut) -> None:
    """The engine comes back with the power (and restarts what its restart policies say); a panic on
    the network database the cut left is recovered as fioup-flow's docker drop-in does (see
    private_engine); anything else needs a person: the run cannot go on."""
    recoveries = lab.power.recoveries if lab.power else 0
    try:
        lab.boot_engine()
    except EngineDidNotStart as exc:
        cut.failures["engine"] = f"the Docker engine did not start after the cut: {lab.power.last_words() or exc}"
        raise
    cut.networks_moved = bool(lab.power) and lab.power.recoveries > recoveries


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


def check(lab: Lab, device: Device, cut: Cut, target: int, at_cut: AtCut, plans: PlanCatcher,
          failing: tuple[int, float] | None = None) -> None:
    """The invariants, each failure written into `cut.failures`; `target` is the version to end on."""
    problems = settle(lambda: lab.world_problems(device, target))
    if failing and not any(bad["version"] == failing[0] for bad in device.store().bad_targets().values()):
        problems.append(f"version {failing[0]} is not marked bad in the device's store")
    if problems:
        stories = {app: container_story(lab.engine, app) for app in lab.expect(target).images
                   if any(p.startswith(f"{app}/") for p in problems)}
        cut.failures["1-target"] = "; ".join(problems) + "".join(f" [{a}: {s}]" for a, s in stories.items())

    store = BlobStore(device.sota / "reset-apps")
    corrupt = [d for d in store.digests() if not store.verify(d)]
    cut.corrupt = len(corrupt)
    if corrupt:
        cut.failures["2-blobs"] = f"{len(corrupt)} corrupt: {', '.join(d[:19] for d in corrupt)}"

    check_events(lab, device, cut, target, at_cut, plans, failing)

    after = registry_blob_gets(lab.home)[at_cut.gets:]
    again = sorted({d for d, _ in after} & at_cut.verified)
    if again:
        cut.failures["4-refetch"] = f"verified before the cut, fetched again: {', '.join(d[:19] for d in again)}"
    for digest, kept in at_cut.kept.items():  # a partial download resumes from what was kept
        resumed = sum(written for d, written in after if d == digest)
        if store.has(digest) and resumed > store.path(digest).stat().st_size - kept:
            cut.failures["4-refetch"] = f"{digest[:19]}: {kept} bytes kept at the cut, yet {resumed} fetched after"


def container_story(engine: docker.DockerClient, app: str) -> str:
    """What the engine says of an app's containers: state, exit code, error, last log line."""
    stories = []
    for container in engine.containers.list(all=True, filters={"label": f"com.docker.compose.project={app}"}):
        state = container.attrs["State"]
        last = container.logs(tail=1).decode(errors="replace").strip()
        stories.append(f"{container.name} {state['Status']} exit {state['ExitCode']} {state.get('Error') or ''}"
                       f" restarts {container.attrs.get('RestartCount')} log {last!r}")
    return "; ".join(stories) or "no container"


def check_events(lab: Lab, device: Device, cut: Cut, target: int, at_cut: AtCut, plans: PlanCatcher,
                 failing: tuple[int, float] | None = None) -> None:
    """Invariant 3: the gateway holds exactly the events of the update's frozen plan, in order; in
    the failing scenario, the rollback's so, and the failed update's a prefix ending in failure."""
    history = device.store().history()
    if not history or history[0].get("version") != target:
        cut.failures["3-events"] = "no finished update to the target in the device's history"
        return
    judged = [(history[0], judge_events)]
    if failing:
        if (failed := failed_since(history, *failing)) is None:
            cut.failures["3-events"] = "no rolled-back update in the device's history"
            return
        judged.append((failed, judge_failed_events))
    records = DeviceRecords(lab.home)
    since, deliveries = records.events(device.uuid)[at_cut.events:], records.log(device.uuid, "deliveries")[at_cut.deliveries:]
    problems, verdicts = [], []
    for entry, judge in judged:
        plan = plans.plans.get(entry["plan_id"])
        if plan is None:
            problems.append(f"the plan {entry['plan_id']} that finished was never seen frozen")
            continue
        own = [r for r in since if r["event"]["correlationId"] == entry["correlation_id"]] if failing else since
        verdicts.append(judge(plan, own, deliveries))
    cut.events = verdicts[0] if verdicts else cut.events
    for verdict in verdicts[1:]:  # the same deliveries: their resends are counted once
        cut.events.records += verdict.records
        cut.events.lost += verdict.lost
        cut.events.duplicated += verdict.duplicated
    problems += [problem for verdict in verdicts for problem in verdict.problems]
    if problems:
        cut.failures["3-events"] = "; ".join(problems)


# --- a run of many cuts -------------------------------------------------------------------------------


def plan_cuts(count: int, seed: int, mode: str, at: float | None, scenario: str | None) -> list[Cut]:
    """The cuts of a run, each with a seed of its own so that one can be replayed alone.

    Boundary mode without `at` takes the scenarios in turn and, in each, the node boundaries in
    order: 4 x (nodes per plan) cuts cut after every node of every scenario.
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
        say(cut_line(index, len(cuts), cut))
        if cut.second_boot:
            say(f"  after an engine restart and one more boot: {cut.second_boot}")
        for name, what in cut.failures.items():
            say(f"  FAIL {name}: {what}\n  replay: {cut.replay}")
    return cuts


def cut_line(index: int, count: int, cut: Cut) -> str:
    """One cut, as the run prints it."""
    where = f"node {int(cut.at)}/{cut.boundaries} {cut.node}" if cut.mode == "boundary" else f"{cut.at:.2f} s"
    line = (f"[{index}/{count}] {cut.scenario:10} cut at {where} ({cut.hit or '?'}): apps running "
            f"{cut.running_after:.1f} s after boot, update done {cut.boot_seconds:.1f} s, re-fetched {cut.refetched} B, "
            f"events {cut.events.records} recorded, {cut.events.resends} sent again")
    if cut.engine_restarts:
        line += f", engine restarted to free a leaked port ({', '.join(f'{w:.1f} s' for w in cut.engine_restarts)})"
    if cut.networks_moved:
        line += ", engine's network database moved aside (the docker drop-in's script)"
    if cut.late:
        line += f", {cut.late} of {cut.frozen} processes frozen a moment late (containers runc was starting)"
    if cut.stuck:
        line += f", the freezer did not settle (SIGSTOP too): {cut.stuck}"
    if cut.kept:
        line += f"; disk {cut.kept}"
    return line + ("" if cut.converged else "  FAILED")


def summary(cuts: list[Cut]) -> list[str]:
    names = ["engine", "boot", "1-target", "2-blobs", "3-events", "4-refetch", "5-stopped", "harness"]
    counted = [c for c in cuts if c.hit != NOTHING]
    idle = [c for c in cuts if c.hit == NOTHING]
    refetched = [c.refetched for c in counted] or [0]
    boots = [c.boot_seconds for c in counted if c.converged] or [0.0]
    running = [c.running_after for c in counted if c.converged] or [0.0]
    stopped = [c.stopped[app] for c in counted for app in kept_apps(c.scenario) if app in c.stopped] or [0.0]
    alone = [c for c in counted if not c.engine_restarts and not c.networks_moved]
    restarted = [c for c in counted if c.engine_restarts]
    moved = [c for c in counted if c.networks_moved]
    resends = [c.events.resends for c in counted] or [0]
    return [
        "failures per invariant: " + ", ".join(f"{n} {sum(n in c.failures for c in cuts)}" for n in names),
        "cuts by what they hit: " + ", ".join(f"{h} {sum(c.hit == h for c in cuts)}" for h in HITS),
        (f"the cut froze fioup-flow and the engine in one instant ({', '.join(sorted({c.freezer for c in cuts} - {''}))}"
         f"): {sum(c.frozen for c in cuts)} processes; {sum(c.late for c in cuts)} container processes frozen a "
         f"moment late in {sum(bool(c.late) for c in cuts)} cuts; the freezer did not settle in "
         f"{sum('did not settle' in c.freezer for c in cuts)} cuts (SIGSTOP too)"),
        (f"corrupt blobs {sum(c.corrupt for c in counted)}, lost events {sum(c.events.lost for c in counted)}, "
         f"events recorded twice {sum(c.events.duplicated for c in counted)}, events sent again: "
         f"{sum(resends)} in all, per cut median {statistics.median(resends):.0f} max {max(resends)}"),
        f"bytes received before the cut and lost (fetched again): median {statistics.median(refetched):.0f}, max {max(refetched)}",
        (f"boot to every app running: median {statistics.median(running):.1f} s, max {max(running):.1f} s; "
         f"boot to update done: median {statistics.median(boots):.1f} s"),
        f"longest an app that runs before and after stayed stopped after boot: {max(stopped):.1f} s",
        (f"converged by themselves {sum(c.converged for c in alone)}/{len(alone)}; with fioup-flow restarting the "
         f"engine to free a leaked port {sum(c.converged for c in restarted)}/{len(restarted)} (refusal to engine "
         f"back: max {max((w for c in restarted for w in c.engine_restarts), default=0.0):.1f} s); with the "
         f"engine's network database moved aside by the docker drop-in's script "
         f"{sum(c.converged for c in moved)}/{len(moved)}"),
        (f"failed cuts that converged after an engine restart and one more boot: "
         f"{sum(c.second_boot == 'converged' for c in cuts)}/{sum(not c.converged for c in cuts)}"),
        (f"cuts that hit nothing (the update had ended; not counted below): {len(idle)}, "
         f"converged {sum(c.converged for c in idle)}/{len(idle)}"),
        f"converged {sum(c.converged for c in counted)}/{len(counted)}",
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
    {"reset_after": 2_000_000, "rate": 4_000_000},  # a slow line that also breaks: both fire on any sizeable blob
    {"server_errors": 3},
]


@dataclass
class Trip:
    """One update through faulty links, and what it cost."""

    scenario: str
    faults: dict
    boots: int = 0
    clean_bytes: int = 0  # what the registry link carried for an uninterrupted run of the scenario
    extra_bytes: int = 0  # what it carried beyond that for this run
    fired: int = 0  # how many times the faults fired (see `fired`)
    problems: list[str] = field(default_factory=list)  # invariant 1 after the last boot

    @property
    def converged(self) -> bool:
        return not self.problems

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
        counters = fault_counters(lab.home, proxies)
        try:
            device.run("apply", str(target), timeout=120)
            trip.boots = 1
            while trip.boots < 3 and device.version() != target:
                trip.boots += 1
                boot(device, target)
        finally:
            trip.fired = fired(trip.faults, counters, fault_counters(lab.home, proxies))
            for proxy in proxies:
                proxy.clear()
            Faults(lab.home).clear()
        trip.clean_bytes = clean[trip.scenario]
        trip.extra_bytes = registry.stats.bytes_down - before - trip.clean_bytes
        trip.problems = settle(lambda: lab.world_problems(device, target))
        say(f"[{index}/{len(trips)}] {trip.scenario:10} faults {trip.faults}: "
            f"{'ok' if trip.converged else 'FAILED'}, {trip.boots} boot(s), the fault fired {trip.fired} time(s), "
            f"{trip.extra_bytes} bytes ({trip.extra_share:.1%}) more than the {trip.clean_bytes} of an "
            f"uninterrupted run" + "".join(f"\n  FAIL {p}" for p in trip.problems))
    return trips


def fault_counters(home: FactoryHome, proxies: tuple[FaultProxy, FaultProxy]) -> dict[str, float]:
    """What the faults did so far: the two proxies' counters added up, and the 503s the factory
    still owes (counted down as it answers them)."""
    counters: dict[str, float] = {}
    for proxy in proxies:
        for name, value in asdict(proxy.stats).items():
            counters[name] = counters.get(name, 0) + value
    counters["server_errors_left"] = int(Faults(home).get("http_errors", 0))
    return counters


# what shows that each fault fired: the counters it moves
FAULT_SIGNS = {"reset_probability": "resets", "reset_after": "resets", "stall_after": "stalls",
               "close_on_accept": "closed_on_accept", "rate": "rate_waits"}


def fired(faults: dict, before: dict[str, float], after: dict[str, float]) -> int:
    """How many times the trip's faults fired (0: the trip tested nothing): for each fault set,
    its counter's growth; `server_errors`, the 503s the factory answered."""
    if "server_errors" in faults:
        return int(faults["server_errors"] - after["server_errors_left"])
    counts = [after[FAULT_SIGNS[name]] - before[FAULT_SIGNS[name]] for name in faults if name in FAULT_SIGNS]
    return int(min(counts)) if counts else 0


def network_summary(trips: list[Trip]) -> list[str]:
    fired = [t for t in trips if t.fired]
    idle = [t for t in trips if not t.fired]
    extra = [t.extra_bytes for t in trips] or [0]
    shares = [t.extra_share for t in trips] or [0.0]
    total = sum(t.extra_bytes for t in trips) / max(1, sum(t.clean_bytes for t in trips))
    return [
        (f"extra registry bytes over an uninterrupted run: median {statistics.median(extra):.0f}, max {max(extra)} "
         f"(median {statistics.median(shares):.1%}, max {max(shares):.1%} of the update; {total:.1%} over all)"),
        (f"trips whose fault never fired (they tested nothing; not counted below): {len(idle)}, "
         f"converged {sum(t.converged for t in idle)}/{len(idle)}"),
        f"converged {sum(t.converged for t in fired)}/{len(fired)}",
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
    parser.add_argument("--disk", choices=DISK_MODES, default="synced",
                        help="synced: a cut keeps exactly what was synced; reorder: it may keep unsynced writes "
                             "too, in part, torn (tests/faults/powercutfs.py)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the way Ctrl-C does: clean up
    print(f"powercut: seed {args.seed}, mode {'network' if args.network else args.mode}, disk {args.disk}, "
          f"work {args.work}")
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
            with PowercutMount(args.work / "backing", args.work / "mnt", mode=args.disk) as disk:
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
