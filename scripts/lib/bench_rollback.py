"""The measuring half of `scripts/bench-rollback`: how soon the previous version serves again after a
failed health window.

`scripts/bench-rollback` starts a private Docker engine and a local factory, then runs this with
DOCKER_HOST set and .venv/bin first on PATH. It publishes version 1 (shellhttpd v1 + pair v1) and
version 2 (shellhttpd v2 + crashloop, pair dropped: crashloop runs a second, exits 1 and is
restarted), registers one device with the default health window, applies version 1, and then
for each round runs `fioup-flow apply 2 --force` (version 2 is marked bad after the first round)
while three watchers take timestamps:

* fioup-flow's own progress lines (stderr): when the node `healthy:crashloop@...` failed;
* the engine's event log: when crashloop's container first died (the crash the window caught);
* from the failure on, every 20 ms: when shellhttpd's page says v1 and every container of
  shellhttpd and pair runs the image it ran before the update (version 1 serving again).

Figures, medians over the rounds, one line each, `name value unit`: failed window -> version 1
serving (`rollback_serving_s`), first crash -> version 1 serving (`crash_to_serving_s`), and the
goal (`goal_s`: the health window plus 2 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import requests

from fioup_flow.config import Config

TAG = "bench-rollback"
V1 = {"shellhttpd": "sample:shellhttpd/v1", "pair": "sample:pair/v1"}
V2 = {"shellhttpd": "sample:shellhttpd/v2", "crashloop": "sample:crashloop/v1"}
ROLLED_BACK = 110
POLL_S = 0.02
PROJECT, SERVICE = "com.docker.compose.project", "com.docker.compose.service"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(argv: list[str], env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode not in ok:
        log(f"command failed ({done.returncode}): {' '.join(argv)}\n{done.stdout}{done.stderr}")
        raise SystemExit(1)
    return done


@dataclass
class Round:
    window_failed: float
    first_crash: float
    serving: float

    @property
    def serving_s(self) -> float:
        return self.serving - self.window_failed


class RestoredWatch(threading.Thread):
    """Once armed, looks every POLL_S until version 1 serves again: shellhttpd's page says v1 and
    every container of shellhttpd and pair runs a version 1 image."""

    def __init__(self, engine: docker.DockerClient, port: str, images: dict[str, str]):
        super().__init__(daemon=True)
        self.engine, self.url, self.images = engine, f"http://127.0.0.1:{port}/", images
        self.armed = threading.Event()
        self.restored: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        self.armed.wait()
        while not self.stop.is_set():
            if running_images(self.engine) == self.images and "v1" in page(self.url):
                self.restored = time.time()
                return
            time.sleep(POLL_S)


def page(url: str) -> str:
    try:
        return requests.get(url, timeout=1).text
    except requests.RequestException:
        return ""


def running_images(engine: docker.DockerClient) -> dict[str, str]:
    """project/service -> image ID of every running container of version 1's apps."""
    return {f"{c.labels[PROJECT]}/{c.labels[SERVICE]}": c.attrs["Image"] for c in engine.containers.list()
            if c.labels.get(PROJECT) in V1}


def first_crash(engine: docker.DockerClient, since: float, until: float) -> float:
    for event in engine.events(since=int(since) - 1, until=int(until) + 1, decode=True,
                               filters={"type": "container", "event": "die",
                                        "label": "com.docker.compose.project=crashloop"}):
        at = event["timeNano"] / 1e9
        if at >= since:
            return at
    raise RuntimeError("crashloop never died: the round measured nothing")


def one_round(engine: docker.DockerClient, env: dict[str, str], port: str) -> Round:
    """`apply 2 --force` over version 1, rolled back; when its window failed, when crashloop first
    died, when version 1 served again."""
    watch = RestoredWatch(engine, port, running_images(engine))
    watch.start()
    began = time.time()
    process = subprocess.Popen(["fioup-flow", "apply", "2", "--force"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    window_failed, lines = None, []
    for line in process.stderr:
        lines.append(line)
        if window_failed is None and line.startswith("failed") and "healthy:crashloop" in line:
            window_failed = time.time()
            watch.armed.set()
    code = process.wait()
    watch.join(timeout=10)
    watch.stop.set()
    if code != ROLLED_BACK or window_failed is None or watch.restored is None:
        log("".join(lines))
        raise SystemExit(f"the round did not roll back as expected (exit {code})")
    return Round(window_failed, first_crash(engine, began, time.time()), watch.restored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--factory-json", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    factory = json.loads(args.factory_json.read_text())
    home = args.work / "factory"
    for version, apps in ((1, V1), (2, V2)):
        argv = ["fioup-flow-factory", "publish", "--home", str(home), "--version", str(version), "--tag", TAG]
        for name, spec in apps.items():
            argv += ["--app", f"{name}={spec}"]
        run(argv)
    device = args.work / "device"
    run(["fioup-flow", "register", "--factory", factory["factory"], "--server", factory["api"],
         "--token", factory["registration_token"], "--ca", factory["ca"], "--name", f"bench-rollback-{os.getpid()}",
         "--tag", TAG, "--sota-dir", str(device)])
    port = os.environ["SHELLHTTPD_PORT"]
    drop_in = device / "compose-env.toml"
    drop_in.write_text(f'[compose_env]\nSHELLHTTPD_PORT = "{port}"\n')
    env = dict(os.environ, FIOUP_FLOW_CFG_DIRS=f"{device / 'sota.toml'},{drop_in}", SSL_CERT_FILE=factory["ca_bundle"])
    run(["fioup-flow", "apply", "1"], env)
    engine = docker.from_env()
    rounds = []
    for number in range(1, args.rounds + 1):
        rounds.append(one_round(engine, env, port))
        r = rounds[-1]
        log(f"round {number}: the window failed {r.window_failed - r.first_crash:.2f} s after the first crash; "
            f"version 1 served again {r.serving_s:.2f} s after that")
    health_window = Config.load((str(device / "sota.toml"), str(drop_in))).health_window
    print(f"rollback_serving_s {statistics.median(r.serving_s for r in rounds):.2f} s")
    print(f"crash_to_serving_s {statistics.median(r.serving - r.first_crash for r in rounds):.2f} s")
    print(f"goal_s {health_window + 2:.2f} s")


if __name__ == "__main__":
    main()
