"""The measuring half of `scripts/bench-daemon`: what `fioup-flow daemon` costs while it has nothing to do.

`scripts/bench-daemon` starts a private Docker engine and a local factory, then runs this with
DOCKER_HOST set and .venv/bin first on PATH. A device registered as `bench_apply.Bench` does it
runs version 1 (two sample apps), then `fioup-flow daemon` polls every POLL_S seconds:

* idle from its start: after WARMUP idle cycles, the CPU time the daemon's own process used
  (utime + stime from /proc; nothing is spawned in an idle cycle) over CYCLES idle cycles,
  per cycle, and its RSS (VmRSS) then;
* idle after an update: version 2 is published, the daemon applies it (and starts afresh, see
  `Daemon._renew`), and the same figures are taken over the idle cycles after it: the RSS a
  device sees most of its life. The process id stays: CPU times go on across the exec.

An idle cycle is one TUF refresh (the timestamp, unchanged) and a few engine calls; the registry's
log shows no blob fetched during the idle cycles. Ends with one line per figure, `name value unit`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench_apply import Bench, log, run

POLL_S = 2
WARMUP = 3
CYCLES = 30
TICK = os.sysconf("SC_CLK_TCK")
APPS = {1: {"shellhttpd": "sample:shellhttpd/v1", "pair": "sample:pair/v1"},
        2: {"shellhttpd": "sample:shellhttpd/v2", "pair": "sample:pair/v1"}}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def rss_mb(pid: int) -> float:
    found = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(found[1]) / 1024


def idle_cycles(log_file: Path) -> int:
    return log_file.read_text().count("cycle idle")


def wait_idle(log_file: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while idle_cycles(log_file) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"no {count} idle cycles in {timeout} s:\n{log_file.read_text()[-3000:]}")
        time.sleep(0.1)


def measure(pid: int, log_file: Path) -> tuple[float, float]:
    """(CPU seconds per idle cycle, VmRSS MB) over CYCLES idle cycles from the next one on."""
    start = idle_cycles(log_file)
    wait_idle(log_file, start + 1, 60)
    cpu = cpu_seconds(pid)
    wait_idle(log_file, start + 1 + CYCLES, CYCLES * POLL_S * 3)
    return (cpu_seconds(pid) - cpu) / CYCLES, rss_mb(pid)


def blob_gets(home: Path) -> int:
    return len(re.findall(r'http.request.method=GET .*/blobs/sha256:', (home / "logs" / "registry.log").read_text()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--factory-json", type=Path, required=True)
    args = parser.parse_args()
    bench = Bench(args.work, json.loads(args.factory_json.read_text()))
    home = args.work / "factory"

    def publish(version: int) -> None:
        argv = ["fioup-flow-factory", "publish", "--home", str(home), "--version", str(version), "--tag", "bench"]
        for name, spec in APPS[version].items():
            argv += ["--app", f"{name}={spec}"]
        run(argv)

    publish(1)
    env = bench.register(0)
    poll = args.work / "z-poll.toml"
    poll.write_text(f"[uptane]\npolling_sec = {POLL_S}\n")
    env["FIOUP_FLOW_CFG_DIRS"] += f",{poll}"
    run(["fioup-flow", "apply", "1"], env)
    log_file = args.work / "daemon.log"
    with open(log_file, "w") as err:
        daemon = subprocess.Popen(["fioup-flow", "daemon"], env=env, stderr=err, stdout=subprocess.DEVNULL)
    try:
        wait_idle(log_file, WARMUP, 120)
        gets = blob_gets(home)
        cpu_fresh, rss_fresh = measure(daemon.pid, log_file)
        assert blob_gets(home) == gets, "an idle cycle fetched a blob"
        publish(2)
        seen = idle_cycles(log_file)
        deadline = time.monotonic() + 300
        while "cycle updated" not in log_file.read_text():
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit(f"version 2 not applied:\n{log_file.read_text()[-3000:]}")
            time.sleep(0.2)
        wait_idle(log_file, seen + WARMUP, 120)
        cpu_after, rss_after = measure(daemon.pid, log_file)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    log(f"idle cycles measured: {CYCLES} each, polling every {POLL_S} s; log in {log_file}")
    print(f"daemon_idle_rss_mb {rss_fresh:.1f} MB")
    print(f"daemon_cpu_per_idle_cycle_s {cpu_fresh:.3f} s")
    print(f"daemon_idle_rss_after_update_mb {rss_after:.1f} MB")
    print(f"daemon_cpu_per_idle_cycle_after_update_s {cpu_after:.3f} s")


if __name__ == "__main__":
    sys.exit(main())
