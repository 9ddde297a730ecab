"""The measuring half of `scripts/bench-apply`: fioup-flow apply against `docker compose pull && up -d`.

`scripts/bench-apply` starts a private Docker engine and a local factory, then runs this with
DOCKER_HOST set and .venv/bin first on PATH. This module publishes three apps in two versions
(version 2 adds about 65 MB of new, incompressible layers to each app; ticker's version 2 is
its version 1 plus those layers), and for each round
measures both ways of going from version 1 to version 2, one after the other on the same engine:

* fioup-flow: a fresh device applies version 1 (not timed), then `fioup-flow apply 2` is timed,
  with two peaks of memory: its own process's (VmHWM, `peak_rss_mb`) and its whole process tree's
  (the sum of VmRSS over fioup-flow and every process it started, docker-compose included,
  sampled every 20 ms from /proc: `peak_rss_tree_mb`). A cgroup's peak would count the page
  cache the download fills too, which is not the update's memory; this machine's cgroups (v1)
  have no per-process peak.
* baseline: the apps are taken down and every image removed (so no layer of version 2 is in
  the engine), the published, pinned compose files of version 1 are started (pulled, not
  timed), then for each app in turn `docker compose pull && docker compose up -d` with its
  version 2 compose file is timed, the engine pulling from the factory registry over TLS
  (its CA in /etc/docker/certs.d/<registry>/, logged in as the factory's publisher). With
  `--baseline-wait` it runs `up -d --wait`, which like fioup-flow waits for health checks.

Before each fioup-flow round every image is removed too, so each side downloads the same
new layers and neither benefits from the other's cache. The sides take turns going first (odd
rounds fioup-flow, even rounds the baseline), so neither always runs on a machine the other
just warmed or loaded. Downtime per app is read afterwards
from the engine's event log: last `die` of an old container to first `start` of a new one.
fioup-flow's progress log is kept per round (apply-2-round-N.log, seconds since start on each
line) and split into phases (plan, fetch, install, stop+start, the rest) in the summary.
`plan_phase_s` is the time from starting `fioup-flow apply 2` to its plan frozen (the
checkpoint store's `frozen_at`, kept as the update's history entry's `started`): the
interpreter's start, the TUF refresh, walking the app trees, compiling and freezing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker

from fioup_flow.checkpoint import CheckpointStore, store_path
from fioup_flow.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from private_engine import process_tree  # noqa: E402
from support import register  # noqa: E402  - the one way devices are registered

TAG = "bench"
LAYER_MB = 65
APPS_V1 = {"shellhttpd": "sample:shellhttpd/v1", "pair": "sample:pair/v1", "ticker": "sample:ticker/v1"}
APPS_V2 = {"shellhttpd": "sample:shellhttpd/v2", "pair": "sample:pair/v2", "ticker": "sample:ticker/v1"}
BASELINE_PREFIX = "base-"
RSS_POLL_S = 0.02
PROJECT_LABEL = "com.docker.compose.project"
# Where fioup-flow's time goes: each phase ends at the first progress line holding its marker.
PHASES = (("plan", "Updating to"), ("fetch", "report:EcuDownloadCompleted"),
          ("install", "report:EcuInstallationApplied"), ("stop+start", "report:EcuInstallationCompleted"),
          ("commit+prune+report", " completed"))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Run a command; on failure show its output and stop the benchmark."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        log(f"command failed ({done.returncode}): {' '.join(argv)}\n{done.stdout}{done.stderr}")
        raise SystemExit(1)
    return done.stdout


@dataclass
class Side:
    """One timed update: wall seconds, downtime per app, and (fioup-flow only) peak RSS."""
    seconds: float
    downtime: dict[str, float]
    peak_rss_mb: float | None = None  # fioup-flow's own process
    peak_rss_tree_mb: float | None = None  # fioup-flow and every process it started
    phases: dict[str, float] = field(default_factory=dict)
    plan_s: float | None = None  # fioup-flow only: from the command's start to its plan frozen

    @property
    def worst_downtime(self) -> float:
        return max(self.downtime.values())


@dataclass
class Bench:
    work: Path
    factory: dict
    engine: docker.DockerClient = field(init=False)

    def __post_init__(self) -> None:
        self.engine = docker.from_env()
        self.home = self.work / "factory"
        self.compose_files = self.work / "compose"

    # --- setup -------------------------------------------------------------------------
    def publish(self) -> None:
        """Version 1 small; version 2 with LAYER_MB of new layers per app (in its first service)."""
        for version, apps, extra in ((1, APPS_V1, []), (2, APPS_V2, ["--layer-mb", str(LAYER_MB)])):
            argv = ["fioup-flow-factory", "publish", "--home", str(self.home), "--version", str(version),
                    "--tag", TAG, *extra]
            for name, spec in apps.items():
                argv += ["--app", f"{name}={spec}"]
            run(argv)
        log(f"published versions 1 and 2 of {', '.join(APPS_V1)} ({LAYER_MB} MB of new layers per app in 2)")

    def engine_login(self) -> dict[str, str]:
        """Let the engine pull from the factory registry: trust its CA, log in with the publisher."""
        registry = self.factory["registry"]
        certs = Path("/etc/docker/certs.d") / registry
        certs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.factory["public_ca"], certs / "ca.crt")
        env = dict(os.environ, DOCKER_CONFIG=str(self.work / "docker-config"))
        publisher = json.loads((self.home / "factory.json").read_text())["publisher"]
        done = subprocess.run(["docker", "login", registry, "-u", publisher["username"], "--password-stdin"],
                              input=publisher["secret"], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            log(f"docker login {registry} failed: {done.stderr}")
            raise SystemExit(1)
        return env

    def clean_engine(self) -> None:
        """No app running and no image left: the next side starts from nothing cached."""
        for container in self.engine.containers.list(all=True):
            container.remove(force=True)
        for image in self.engine.images.list(all=True):
            self.engine.images.remove(image.id, force=True)
        self.engine.images.prune()

    # --- fioup-flow side ---------------------------------------------------------------
    def register(self, round_no: int) -> dict[str, str]:
        """A new device, with its image's TUF roots beside it; the environment that selects it."""
        device = self.work / f"device-{round_no}"
        done = register(self.factory, device, f"bench-{os.getpid()}-{round_no}", "--tag", TAG)
        if done.returncode != 0:
            log(f"fioup-flow register failed ({done.returncode}):\n{done.stdout}{done.stderr}")
            raise SystemExit(1)
        run(["fioup-flow-factory", "roots", "--home", str(self.home), "--out", str(self.work / "image-tuf")])
        image = self.work / "image-roots.toml"
        image.write_text(f'[storage]\nuptane_metadata_path = "{self.work / "image-tuf"}"\n')
        # compose reads the port shellhttpd publishes from the device's config, not the environment
        drop_in = device / "compose-env.toml"
        drop_in.write_text(f'[compose_env]\nSHELLHTTPD_PORT = "{os.environ["SHELLHTTPD_PORT"]}"\n'
                           # the health window is a deliberate wait, not the update's mechanics: not timed
                           '[pacman]\nhealth_window = 0\n')
        # The registry's certificate is the factory's "public" CA's, which devices trust through
        # the system store: SSL_CERT_FILE names the system's bundle plus that CA.
        return dict(os.environ, FIOUP_FLOW_CFG_DIRS=f"{device / 'sota.toml'},{image},{drop_in}",
                    SSL_CERT_FILE=self.factory["ca_bundle"])

    def save_compose_files(self, env: dict[str, str], version: int) -> None:
        """Keep the installed, pinned compose files of `version` for the baseline."""
        root = Config.load(env["FIOUP_FLOW_CFG_DIRS"].split(",")).compose_apps_root
        for app in APPS_V1:
            target = self.compose_files / f"v{version}" / app
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / app / "docker-compose.yml", target / "docker-compose.yml")

    def fioup_flow_side(self, round_no: int) -> Side:
        self.clean_engine()
        env = self.register(round_no)
        run(["fioup-flow", "apply", "1"], env)
        self.save_compose_files(env, 1)
        start = time.time()
        process = subprocess.Popen(["fioup-flow", "apply", "2"], env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        peak = PeakRss(process.pid)
        # Each line of its progress log with the seconds since start: where the time goes.
        lines = [(time.time() - start, line) for line in process.stdout]
        process.wait()
        seconds = time.time() - start
        peak.stop()
        output = "".join(f"{stamp:7.2f} {line}" for stamp, line in lines)
        (self.work / f"apply-2-round-{round_no}.log").write_text(output)
        if process.returncode != 0:
            log(f"fioup-flow apply 2 failed ({process.returncode}):\n{output}")
            raise SystemExit(1)
        self.save_compose_files(env, 2)
        downtime = downtimes(self.engine, {app: app for app in APPS_V1}, start, time.time())
        return Side(seconds, downtime, peak.own_mb, peak.tree_mb, phases(lines), frozen_at(env) - start)

    # --- baseline side -----------------------------------------------------------------
    def compose(self, app: str, version: int, *args: str) -> list[str]:
        folder = self.compose_files / f"v{version}" / app
        return ["docker-compose", "-p", BASELINE_PREFIX + app, "--project-directory", str(folder),
                "-f", str(folder / "docker-compose.yml"), *args]

    def baseline_side(self, env: dict[str, str], wait: bool) -> Side:
        """`wait`: `up -d --wait`, which like fioup-flow returns only once services are healthy."""
        self.clean_engine()
        for app in APPS_V1:
            run(self.compose(app, 1, "up", "-d", "--quiet-pull"), env)
        start = time.time()
        spent = {"pull": 0.0, "up": 0.0}
        for app in APPS_V1:
            for step, args in (("pull", ("pull", "--quiet")), ("up", ("up", "-d", *(["--wait"] if wait else [])))):
                began = time.time()
                run(self.compose(app, 2, *args), env)
                spent[step] += time.time() - began
        seconds = time.time() - start
        downtime = downtimes(self.engine, {app: BASELINE_PREFIX + app for app in APPS_V1}, start, time.time())
        for app in APPS_V1:
            run(self.compose(app, 2, "down", "--volumes"), env)
        return Side(seconds, downtime, phases=spent)


def frozen_at(env: dict[str, str]) -> float:
    """When the last update of the device `env` selects was frozen (its history entry's start)."""
    config = Config.load(env["FIOUP_FLOW_CFG_DIRS"].split(","))
    with CheckpointStore(store_path(config.flow_dir)) as store:
        return store.history(1)[0]["started"]


class PeakRss:
    """Polls, every RSS_POLL_S, a process's own high-water mark (VmHWM: monotonic, so the last
    sample is its peak) and the sum of VmRSS over its whole tree (the peak of the samples)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.own_kb = 0
        self.tree_kb = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.done.is_set():
            own = _status_kb(self.pid, "VmHWM:")
            if own is None:
                return  # the process is gone (or a zombie without memory lines)
            self.own_kb = max(self.own_kb, own)
            self.tree_kb = max(self.tree_kb, sum(_status_kb(pid, "VmRSS:") or 0 for pid in process_tree(self.pid)))
            self.done.wait(RSS_POLL_S)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()

    @property
    def own_mb(self) -> float:
        return self.own_kb / 1024

    @property
    def tree_mb(self) -> float:
        return self.tree_kb / 1024


def _status_kb(pid: int, field: str) -> int | None:
    """A kB figure of /proc/PID/status (VmRSS:, VmHWM:), or None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def downtimes(engine: docker.DockerClient, projects: dict[str, str], since: float, until: float) -> dict[str, float]:
    """Per app: first `start` of a container minus the last `die` (both within the window), seconds."""
    events = engine.events(since=int(since), until=int(until) + 1, decode=True, filters={"type": "container"})
    dies: dict[str, list[float]] = {p: [] for p in projects.values()}
    starts: dict[str, list[float]] = {p: [] for p in projects.values()}
    for event in events:
        project = event.get("Actor", {}).get("Attributes", {}).get(PROJECT_LABEL)
        stamp = event["timeNano"] / 1e9
        if project not in dies or stamp < since:
            continue
        if event["Action"] == "die":
            dies[project].append(stamp)
        elif event["Action"] == "start":
            starts[project].append(stamp)
    result = {}
    for app, project in projects.items():
        if not dies[project] or not starts[project]:
            log(f"no stop/start of {project} in the engine's events")
            raise SystemExit(1)
        result[app] = min(starts[project]) - max(dies[project])
    return result


def phases(lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds per phase of an apply, from its timestamped progress lines (PHASES)."""
    result, previous = {}, 0.0
    for name, marker in PHASES:
        stamp = next((t for t, line in lines if marker in line), None)
        if stamp is None:
            continue
        result[name], previous = stamp - previous, stamp
    return result


def report(fioup: list[Side], base: list[Side], baseline: str) -> None:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    print(f"baseline: {baseline} ({'waits' if '--wait' in baseline else 'does not wait'} for health checks); "
          f"{len(fioup)} rounds, the sides taking turns going first")
    for label, sides in (("fioup-flow apply", fioup), (baseline, base)):
        walls = ", ".join(f"{s.seconds:.2f}" for s in sides)
        print(f"{label}: {median([s.seconds for s in sides]):.2f} s (rounds: {walls})")
        for name in dict.fromkeys(name for s in sides for name in s.phases):
            values = [s.phases[name] for s in sides if name in s.phases]
            if values:
                print(f"  phase {name}: {median(values):.2f} s (rounds: " + ", ".join(f"{v:.2f}" for v in values) + ")")
        for app in APPS_V1:
            values = [s.downtime[app] for s in sides]
            print(f"  downtime {app}: {median(values) * 1000:.0f} ms (rounds: "
                  + ", ".join(f"{v * 1000:.0f}" for v in values) + ")")
    apply_s, base_s = median([s.seconds for s in fioup]), median([s.seconds for s in base])
    worst_fioup, worst_base = median([s.worst_downtime for s in fioup]), median([s.worst_downtime for s in base])
    print(f"apply_vs_compose_ratio {apply_s / base_s:.3f} ratio")
    print(f"plan_phase_s {median([s.plan_s for s in fioup]):.3f} s")
    print(f"peak_rss_mb {max(s.peak_rss_mb for s in fioup):.1f} MB")
    print(f"peak_rss_tree_mb {max(s.peak_rss_tree_mb for s in fioup):.1f} MB")
    print(f"downtime_vs_compose_ratio {worst_fioup / worst_base:.3f} ratio")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--factory-json", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline-wait", action="store_true",
                        help="baseline runs `up -d --wait` (waits for health checks, as fioup-flow does)")
    args = parser.parse_args()
    started = time.time()
    bench = Bench(args.work, json.loads(args.factory_json.read_text()))
    bench.publish()
    engine_env = bench.engine_login()
    fioup, base = [], []
    baseline = "compose pull && up -d" + (" --wait" if args.baseline_wait else "")
    log(f"baseline measured: `{baseline}` per app"
        + (" (waits for health checks, as fioup-flow does)" if args.baseline_wait else
           " (without --wait: it does not wait for health checks, fioup-flow does)"))
    for round_no in range(1, args.rounds + 1):
        turns = [("fioup-flow apply 2", fioup, lambda n: bench.fioup_flow_side(n)),
                 (baseline, base, lambda n: bench.baseline_side(engine_env, args.baseline_wait))]
        for label, sides, measure in turns if round_no % 2 else turns[::-1]:  # the sides take turns going first
            sides.append(measure(round_no))
            log(f"round {round_no}: {label} took {sides[-1].seconds:.2f} s")
    log(f"benchmark took {time.time() - started:.0f} s (after setup, engine and factory start)")
    report(fioup, base, baseline)


if __name__ == "__main__":
    main()
