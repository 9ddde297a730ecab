"""The measuring half of `scripts/bench-engine`: what the engine's durability costs, and the compiler.

Each figure is measured `--rounds` times and reported as its median and its 95th percentile
(nearest rank: with few rounds, the worst but one or the worst), on a folder of the normal disk
(/var/tmp: /tmp may be a tmpfs, where a sync costs nothing):

- checkpoint_overhead_ms: time per node spent reading and durably writing its record (FULL
  sync), over the nodes of a 400-node plan of no-op tasks (median and p95 over all nodes);
- compile_2000_s: build, validate and freeze a synthetic 2,000-node graph (no compiler);
- compile_update_2000_s: the compiler itself, `planner.compile_update`, on synthetic app trees
  making a 2,000-node plan (an update of every app: fetch, install, stop, start, healthy), plus
  freezing the plan;
- resume_first_node_s: open the store and resume a half-finished 2,000-node plan of no-op tasks
  until the first not-yet-done node runs (in process);
- resume_cli_2000_s: the real `fioup-flow resume` from process start, on a device folder whose
  frozen 2,000-node plan is half done: 1,000 real fetch nodes recorded done, each re-checked
  against the world (its blob is in the store), then 1,000 real report nodes; timed until the
  first report node finished (its progress line). It needs a Docker engine (`DOCKER_HOST`), as
  every `fioup-flow` run that executes a plan does; `scripts/bench-engine` starts one if none is set.
- cli_help_s, cli_status_s: the command line's start-up, `fioup-flow --help`, and `fioup-flow
  status` on the device of resume_cli_2000_s (its 2,000-node plan in progress, half done) with
  a current Target of three apps the engine is asked about; from process start to exit. Each
  round times a bare `python -c pass` (python_start_s) just before them, and each is also given
  as its ratio to that start (`cli_help_vs_python_ratio`, `cli_status_vs_python_ratio`), the
  figure that holds however loaded the machine is. The project's bytecode is compiled first
  (`scripts/bench-engine`), as a device's installed package is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fioup_flow.checkpoint import CheckpointStore, NodeRecord, store_path
from fioup_flow.composeapp import AppTree, Blob, Image
from fioup_flow.engine import Executor
from fioup_flow.graph import Plan
from fioup_flow.planner import Observed, compile_update
from fioup_flow.store import BlobStore
from fioup_flow.targets import App, Target
from fioup_flow.task import Node
from tasks import fetch, report

BASE = Path("/var/tmp")  # the normal disk: /tmp may be a tmpfs, which never syncs
BIN = Path(sys.executable).parent
NODES = 2000
LAYERS_PER_APP = 44  # 49 blobs per app (manifest, bundle, index, image manifest, config, layers) + 4 nodes
APPS = 37  # 37 x 53 + the 11 nodes every update has = 1,972 nodes


class TimedStore(CheckpointStore):
    """Adds up, per node, the time spent reading and durably writing its record."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.spent: dict[str, float] = {}

    def _timed(self, node_id, call, *args):
        start = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.spent[node_id] = self.spent.get(node_id, 0.0) + time.perf_counter() - start

    def record(self, plan_id, node_id):
        return self._timed(node_id, super().record, plan_id, node_id)

    def put_record(self, plan_id, node_id, record):
        return self._timed(node_id, super().put_record, plan_id, node_id, record)


class NoOp:
    """A task with no effect but a set of ids it has 'done'."""

    kind = "noop"

    def __init__(self, done=()):
        self.done = set(done)

    def is_done(self, node):
        return node.id in self.done

    def run(self, node, ctx):
        self.done.add(node.id)


def layered(plan: Plan, nodes: list[Node], width: int = 50) -> Plan:
    """Add `nodes` in layers of `width`; each runs after two nodes of the layer before (like fetch -> install)."""
    for i, node in enumerate(nodes):
        layer, pos = divmod(i, width)
        plan.add(node, [nodes[(layer - 1) * width + (pos + k) % width].id for k in (0, 1)] if layer else [])
    return plan


def noop_plan(count: int) -> Plan:
    return layered(Plan(meta={"target": "bench", "version": 1}),
                   [Node(f"noop:{i}", "noop", {"n": i, "uri": f"hub.example/app@sha256:{i:064x}"}) for i in range(count)])


def checkpoint_overhead_ms(tmp: Path) -> list[float]:
    store = TimedStore(tmp / "overhead")
    Executor(store, {"noop": NoOp()}, handle_signals=False).run(noop_plan(400))
    store.close()
    return [spent * 1000 for spent in store.spent.values()]


def compile_2000_s(folder: Path) -> float:
    with CheckpointStore(folder) as store:
        start = time.perf_counter()
        store.freeze(noop_plan(NODES))
        return time.perf_counter() - start


def _blob(app: str, kind: str, n: int = 0) -> Blob:
    digest = hashlib.sha256(f"{app}/{kind}/{n}".encode()).hexdigest()
    return Blob(f"hub.example/factory/{app}@sha256:{digest}", 1000 + n, kind)


def synthetic_tree(app: str, version: int) -> AppTree:
    """An app of one service whose image has LAYERS_PER_APP layers, every blob its own."""
    tag = f"{app}-v{version}"
    manifest = _blob(tag, "image-manifest")
    image = Image(manifest.uri, manifest, manifest, _blob(tag, "image-config"),
                  tuple(_blob(tag, "layer", n) for n in range(LAYERS_PER_APP)))
    head = _blob(tag, "app-manifest")
    return AppTree(app, head.uri, head, _blob(tag, "bundle"), _blob(tag, "bundle-index"), {"web": image})


def compile_update_2000_s(folder: Path) -> tuple[float, int]:
    """(seconds to compile an update of APPS synthetic apps and freeze it, nodes in the plan)."""
    old = {f"app{n}": synthetic_tree(f"app{n}", 1) for n in range(APPS)}
    new = {name: synthetic_tree(name, 2) for name in old}
    current = Target("bench-1", 1, tuple(App(n, t.uri) for n, t in old.items()), {})
    target = Target("bench-2", 2, tuple(App(n, t.uri) for n, t in new.items()), {})
    with CheckpointStore(folder) as store:
        start = time.perf_counter()
        plan = compile_update(Observed(current, {name: True for name in old}), target, new, prune_all_images=False,
                              health_window=0)
        store.freeze(plan)
        return time.perf_counter() - start, len(plan)


def resume_first_node_s(folder: Path) -> float:
    plan = noop_plan(NODES)
    done = [n.id for n in plan.nodes()][:NODES // 2]
    with CheckpointStore(folder) as store:
        store.freeze(plan)
        for node_id in done:
            store.put_record(plan.plan_id, node_id, NodeRecord(state="done", attempts=1, started=1.0, ended=2.0))
    first: list[float] = []

    def hook(event):
        if event.state == "running" and not first:
            first.append(time.perf_counter())
            executor.stop()

    start = time.perf_counter()
    with CheckpointStore(folder) as store:
        executor = Executor(store, {"noop": NoOp(done)}, on_event=hook, handle_signals=False)
        executor.run()
    return first[0] - start


def half_done_device(folder: Path) -> Path:
    """A device folder (sota.toml, TLS files, blob store) with a frozen 2,000-node plan of real task
    kinds: 1,000 fetch nodes recorded done, whose blobs are in the store, then 1,000 report nodes.
    Returns its sota.toml. The gateway it names does not answer: a report is queued, not delivered."""
    for name in ("client.pem", "pkey.pem"):
        (folder / name).write_text("")  # the gateway is never reached: these are never read
    # the registry client trusts root.crt beside the system's store, so it must be a certificate
    # (any will do: no registry is reached either)
    system_store = Path(ssl.get_default_verify_paths().cafile).read_text()
    (folder / "root.crt").write_text(system_store[:system_store.index("-----END CERTIFICATE-----") + 26])
    (folder / "sota.toml").write_text(f'[tls]\nserver = "https://127.0.0.1:9"\n\n[storage]\npath = "{folder}"\n')
    store = BlobStore(folder / "reset-apps")
    fetches = []
    for n in range(NODES // 2):
        data = f"blob {n}".encode()
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        store.put_bytes(digest, data)
        fetches.append(fetch.node(f"hub.example/factory/app@{digest}", len(data), "layer"))
    plan = Plan(meta={"target": "bench-2", "version": 2})
    reports = [report.event_node("EcuInstallationApplied", f"bench-{n}", plan.plan_id, "bench-2", 2)
               for n in range(NODES // 2)]
    layered(plan, fetches + reports)
    with CheckpointStore(store_path(folder / "flow")) as checkpoint:
        checkpoint.freeze(plan)
        for node in fetches:
            checkpoint.put_record(plan.plan_id, node.id, NodeRecord(state="done", attempts=1, started=1.0, ended=2.0))
    return folder / "sota.toml"


def resume_cli_2000_s(folder: Path) -> float:
    """`fioup-flow resume` from process start to the first report node done (its progress line)."""
    config = half_done_device(folder)
    env = dict(os.environ, FIOUP_FLOW_RETRY_SECONDS="0")
    start = time.perf_counter()
    process = subprocess.Popen([str(BIN / "fioup-flow"), "-c", str(config), "resume"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in process.stderr:
            if line.startswith("done"):
                return time.perf_counter() - start
        raise RuntimeError(f"fioup-flow resume ran no node (exit {process.wait()})")
    finally:
        process.kill()
        process.wait()


def current_target_of_three_apps(flow_dir: Path) -> None:
    """What `status` reports on: a current Target of three apps (the engine runs none of them)."""
    apps = [{"name": name, "uri": f"hub.example/factory/{name}@sha256:{hashlib.sha256(name.encode()).hexdigest()}"}
            for name in ("shellhttpd", "pair", "ticker")]
    (flow_dir / "current.json").write_text(json.dumps({"name": "bench-1", "version": 1, "apps": apps}))


def wall_s(argv: list[str]) -> float:
    """Seconds from starting `argv` to its exit (which must be 0)."""
    start = time.perf_counter()
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def cli_start_s(folder: Path, rounds: int) -> dict[str, list[float]]:
    """Per round: a bare interpreter's start, then `fioup-flow --help` and `fioup-flow status`, and
    each of the two as a ratio to the interpreter's start of the same round."""
    config = half_done_device(folder)
    current_target_of_three_apps(folder / "flow")
    cli = str(BIN / "fioup-flow")
    runs = {name: [] for name in ("python_start_s", "cli_help_s", "cli_status_s")}
    for _ in range(rounds):
        runs["python_start_s"].append(wall_s([sys.executable, "-c", "pass"]))
        runs["cli_help_s"].append(wall_s([cli, "--help"]))
        runs["cli_status_s"].append(wall_s([cli, "-c", str(config), "status"]))
    for name in ("cli_help", "cli_status"):
        runs[f"{name}_vs_python_ratio"] = [s / p for s, p in zip(runs[f"{name}_s"], runs["python_start_s"])]
    return runs


def p95(values: list[float]) -> float:
    """The 95th percentile, nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not os.environ.get("DOCKER_HOST"):
        sys.exit("bench_engine: needs a Docker engine at DOCKER_HOST (scripts/bench-engine starts one)")
    with tempfile.TemporaryDirectory(dir=BASE, prefix="bench-engine-") as tmp_name:
        tmp = Path(tmp_name)

        def each_round(measure: Callable[[Path], float]) -> list[float]:
            """`measure` once per round, each in a folder of its own."""
            values = []
            for n in range(args.rounds):
                folder = tmp / f"{measure.__name__}-{n}"
                folder.mkdir()
                values.append(measure(folder))
            return values

        compiled = [compile_update_2000_s(tmp / f"compile-update-{n}") for n in range(args.rounds)]
        figures = {
            "checkpoint_overhead_ms": (checkpoint_overhead_ms(tmp), "ms"),
            "compile_2000_s": (each_round(compile_2000_s), "s"),
            "compile_update_2000_s": ([seconds for seconds, _ in compiled], "s"),
            "resume_first_node_s": (each_round(resume_first_node_s), "s"),
            "resume_cli_2000_s": (each_round(resume_cli_2000_s), "s"),
        }
        cli = tmp / "cli"
        cli.mkdir()
        for name, values in cli_start_s(cli, args.rounds).items():
            figures[name] = (values, name.rsplit("_", 1)[1])
    print(f"{args.rounds} rounds of each, on {BASE}; checkpoint_overhead_ms over the "
          f"{len(figures['checkpoint_overhead_ms'][0])} nodes of one plan; compile_update's plan has "
          f"{compiled[0][1]} nodes; p95 by nearest rank", file=sys.stderr)
    for name, (values, unit) in figures.items():
        print(f"{name} {statistics.median(values):.3f} {unit}")
        print(f"{name.removesuffix('_' + unit)}_p95_{unit} {p95(values):.3f} {unit}")


if __name__ == "__main__":
    main()
