"""`fioup-flow daemon` and `fioup-flow fetch` on the real engine, against the local factory, judged by
the world: the engine's containers, the registry's log of the bytes it sent, the gateway's records.

- a cycle continues, checks, applies; a cycle with nothing to do fetches nothing and reports nothing new;
- `fetch` downloads all an update needs and touches no running app; `apply` then fetches nothing;
- a newer Target published mid-download supersedes the update: no blob is fetched twice;
- an install window: the download at once, the install only once the (injected) clock enters it;
- a factory that goes away and comes back: the daemon backs off, then updates, nothing lost;
- a crash-looping Target is rolled back and never tried again, and a newer one published later is installed;
- transient failures are tried again, then given up after `pacman.max_attempts`: back to the current Target;
- SIGTERM stops it (asleep: at once; mid-download: at the next chunk, resumable), exit 0; SIGHUP reloads.

Each test has a hardware id of its own, so its versions are the only ones its device sees.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import docker
import pytest
from faults.netproxy import FaultProxy
from support import (
    BIN,
    Device,
    fresh_device,
    health_window_drop_in,
    largest_partial,
    publish,
    registry_blob_gets,
    running_images,
    sample_page,
)
from test_crash import failed_for_good, wait_for

from fioup_flow.config import Config
from fioup_flow.daemon import Daemon, Stopped
from fioup_flow.errors import InstallError
from fioup_flow.factory.devices import DeviceRecords

pytestmark = [pytest.mark.factory, pytest.mark.docker]

TAG = "daemon"
MIB = 1024 * 1024
SOCKET_SLACK = 8 * MIB  # a stopped download loses what the loopback's TCP buffers held (autotuned to MBs)
V1 = {"shellhttpd": "shellhttpd/v1", "pair": "pair/v1"}
V2 = {"shellhttpd": "shellhttpd/v2", "pair": "pair/v1"}
V3 = {"shellhttpd": "shellhttpd/v2", "ticker": "ticker/v1"}
CRASHING = {"shellhttpd": "shellhttpd/v2", "crashloop": "crashloop/v1"}  # crashloop restarts every second
_HWIDS = itertools.count()


@pytest.fixture
def hwid(factory) -> str:
    """A hardware id of this test's own, with version 1 published for it."""
    name = f"daemon{next(_HWIDS)}-{os.getpid()}-linux"
    publish(factory.home.root, 1, V1, TAG, "--hwid", name)
    return name


@pytest.fixture
def device(factory, engine, hwid, tmp_path: Path) -> Iterator[Device]:
    """A device running version 1, polling every 2 s."""
    with fresh_device(factory, engine, tmp_path / "sota", TAG, hwid) as device:
        assert device.run("apply", "1").returncode == 0
        device.drop_ins.append(drop_in(tmp_path / "z-daemon.toml", "[uptane]\npolling_sec = 2\n"))
        yield device


def drop_in(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def publish_version(factory, hwid: str, version: int, apps: dict[str, str], big_mb: int = 0) -> None:
    extra = ("--layer-mb", f"shellhttpd={big_mb}") if big_mb else ()
    publish(factory.home.root, version, apps, TAG, "--hwid", hwid, *extra)


@contextmanager
def start_daemon(device: Device, log: Path, *args: str) -> Iterator[subprocess.Popen]:
    """The daemon in the background, its stderr in `log`; killed on the way out, whatever happened
    (a clean stop is the test's to make and check: `stop`)."""
    cfg_dirs = ",".join(str(p) for p in [device.cfg, *device.drop_ins])
    with open(log, "w") as stderr:
        daemon = subprocess.Popen([str(BIN / "fioup-flow"), "-c", cfg_dirs, "daemon", *args], stderr=stderr,
                                  stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                  env=dict(os.environ, FIOUP_FLOW_RETRY_SECONDS="3"))
    try:
        yield daemon
    finally:
        daemon.kill()
        daemon.wait()


def stop(process: subprocess.Popen, within: float) -> int:
    """SIGTERM; the exit code, which must come within `within` seconds."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=within)


def containers(engine: docker.DockerClient) -> dict[str, tuple[str, str]]:
    """Every running container: name -> (id, start time)."""
    return {c.name: (c.id, c.attrs["State"]["StartedAt"]) for c in engine.containers.list()}


def projects(engine: docker.DockerClient) -> set[str]:
    return {c.labels["com.docker.compose.project"] for c in engine.containers.list()}


def status(device: Device) -> dict:
    return device.json("status", "--json")


def version(device: Device) -> int | None:
    return (status(device)["current"] or {}).get("version")


def stopped_mid_download(factory, hwid: str, device: Device, tmp_path: Path, pacman: str = "") -> None:
    """Version 2 published with 32 MB more, fetched at 4 MB/s; the daemon stopped by SIGTERM once 4 MiB
    of it are in (exit 0)."""
    device.drop_ins.append(drop_in(tmp_path / "z-rate.toml", f'[pacman]\ndownload_rate_limit = "4M"\n{pacman}'))
    publish_version(factory, hwid, 2, V2, big_mb=32)
    with start_daemon(device, tmp_path / "first.log") as daemon:
        wait_for(lambda: largest_partial(device) > 4 * MIB, 120, "version 2 partly fetched")
        assert stop(daemon, 10) == 0


def blob_sizes(device: Device) -> dict[str, int]:
    folder = device.sota_dir / "reset-apps" / "blobs" / "sha256"
    return {f"sha256:{p.name}": p.stat().st_size for p in folder.iterdir()} if folder.is_dir() else {}


def blob_writes_since(factory, count: int) -> dict[str, list[int]]:
    """The bytes the registry wrote for each GET of each blob since its log held `count` blob GETs."""
    time.sleep(1)  # let the registry log the responses a stop cut short
    writes: dict[str, list[int]] = {}
    for digest, written in registry_blob_gets(factory.home)[count:]:
        writes.setdefault(digest, []).append(written)
    return writes


def gets(factory) -> int:
    return len(registry_blob_gets(factory.home))


def events_of(factory, device: Device) -> list[dict]:
    records = DeviceRecords(factory.home)
    return records.events(records.find(device.name)["uuid"])


def apps_states_of(factory, device: Device) -> list[dict]:
    records = DeviceRecords(factory.home)
    return records.apps_states(records.find(device.name)["uuid"])


# --- the cycle ------------------------------------------------------------------------------------


def test_a_cycle_applies_the_latest_target_and_one_with_nothing_to_do_fetches_and_reports_nothing_new(
        factory, engine, hwid, device) -> None:
    publish_version(factory, hwid, 2, V2)
    done = device.run("daemon", "--once")
    assert done.returncode == 0, done.stderr
    assert version(device) == 2 and "v2" in sample_page()
    assert re.search(r"cycle updated: update \w+ to \S+-2 completed; next cycle at once", done.stderr)
    assert re.search(r"cycle idle: running \S+-2 \(version 2\), nothing to do; next check in [23](\.\d)? s", done.stderr)
    assert "node fetch:sha256:" in done.stderr and "progress" not in done.stderr

    before = (containers(engine), gets(factory), len(events_of(factory, device)), len(apps_states_of(factory, device)))
    done = device.run("daemon", "--once")
    assert done.returncode == 0, done.stderr
    assert "cycle idle" in done.stderr and "node " not in done.stderr
    time.sleep(1)  # reports go out in the background
    after = (containers(engine), gets(factory), len(events_of(factory, device)), len(apps_states_of(factory, device)))
    assert after == before, "nothing restarted, fetched or reported again"


def test_fetch_downloads_everything_and_touches_no_running_app_then_apply_fetches_nothing(
        factory, engine, hwid, device) -> None:
    publish_version(factory, hwid, 2, V2, big_mb=16)
    before, count = containers(engine), gets(factory)
    done = device.run("fetch")
    assert done.returncode == 0, done.stderr
    assert "downloaded and verified; `fioup-flow apply` installs it" in done.stdout
    assert containers(engine) == before, "no app stopped, started or recreated"
    in_progress = status(device)["in_progress"]
    assert in_progress["version"] == 2 and in_progress["counts"]["done"] > 0
    assert device.run("fetch").returncode == 0, "a second fetch finds it all done"
    fetched = gets(factory)
    assert fetched > count

    done = device.run("apply")
    assert done.returncode == 0, done.stderr
    assert gets(factory) == fetched, "apply found every blob in the store"
    assert version(device) == 2 and "v2" in sample_page()


def test_fetch_of_another_version_than_the_update_in_progress_is_refused(factory, hwid, device) -> None:
    publish_version(factory, hwid, 2, V2)
    publish_version(factory, hwid, 3, V3)
    assert device.run("fetch", "2").returncode == 0
    done = device.run("fetch", "3")
    assert done.returncode == 10, done.stderr
    assert status(device)["in_progress"]["version"] == 2


# --- a Target that fails for good ----------------------------------------------------------------


def update_events(factory, device: Device, version: int) -> list[dict]:
    """The events the gateway holds of updates to `version`, in the order they came."""
    return [e for e in events_of(factory, device) if e["event"]["version"] == str(version)]


def ends(events: list[dict], correlation_id: str) -> tuple[str, bool | None, str]:
    """The last event of the attempt `correlation_id`: its type, success and details."""
    last = [e for e in events if e["event"]["correlationId"] == correlation_id][-1]
    return last["eventType"]["id"], last["event"]["success"], last["event"]["details"]


def a_newer_good_target_is_installed(factory, engine, hwid: str, device: Device) -> None:
    """Version 3 published, one `daemon --once`: it runs (the engine, the sample page), and the gateway
    heard its one attempt end in success."""
    publish_version(factory, hwid, 3, V3)
    done = device.run("daemon", "--once", timeout=240)
    assert done.returncode == 0, done.stderr
    assert projects(engine) == {"shellhttpd", "ticker"} and "v2" in sample_page(), "the newer Target runs"
    (attempt,) = {e["event"]["correlationId"] for e in update_events(factory, device, 3)}
    assert ends(update_events(factory, device, 3), attempt)[:2] == ("EcuInstallationCompleted", True)


def test_a_crash_looping_version_is_rolled_back_never_tried_again_and_a_newer_good_one_is_installed(
        factory, engine, hwid, device, tmp_path: Path) -> None:
    device.drop_ins.append(health_window_drop_in(tmp_path, 3, "z-health.toml"))
    before = running_images(engine)
    publish_version(factory, hwid, 2, CRASHING)
    done = device.run("daemon", "--once", timeout=240)
    assert done.returncode == 0, done.stderr
    assert running_images(engine) == before and "v1" in sample_page(), "version 1 serves again, its own images"
    rolled, failed = status(device)["history"][:2]
    v1, v2 = update_events(factory, device, 1), update_events(factory, device, 2)
    assert ends(v2, failed["correlation_id"])[:2] == ("EcuInstallationCompleted", False), "v2's failure reported"
    assert ends(v1, rolled["correlation_id"])[:2] == ("EcuInstallationCompleted", True), "so is the rollback, done"
    assert len({e["event"]["correlationId"] for e in v2}) == 1, "v2 tried once: the next cycle skipped it"

    count = gets(factory)
    done = device.run("daemon", "--once", timeout=240)
    assert done.returncode == 0, done.stderr
    assert update_events(factory, device, 2) == v2 and gets(factory) == count, "the bad Target is not tried again"
    assert running_images(engine) == before

    a_newer_good_target_is_installed(factory, engine, hwid, device)
    assert update_events(factory, device, 2) == v2, "and v2 still never tried again"


def test_a_failure_for_good_found_at_start_is_handed_over_before_a_newer_target_may_cancel_its_update(
        factory, engine, hwid, device) -> None:
    """A run that failed for its Target's own reason and was killed before the hand-over: the daemon
    hands it over (its Target bad, the failure reported), rather than cancelling it for the newer Target."""
    publish_version(factory, hwid, 2, V2)
    assert device.run("fetch", "2").returncode == 0
    failed_for_good(device, "install:shellhttpd", InstallError("app shellhttpd: malformed compose file"))
    a_newer_good_target_is_installed(factory, engine, hwid, device)
    v2 = update_events(factory, device, 2)
    (attempt,) = {e["event"]["correlationId"] for e in v2}
    event, success, details = ends(v2, attempt)
    assert (event, success) == ("EcuInstallationCompleted", False)
    assert "malformed compose file" in json.loads(details)["error"], "its own failure reported, not a cancel"
    assert [b["version"] for b in status(device)["bad_targets"]] == [2]


# --- a newer Target supersedes ---------------------------------------------------------------------


def test_a_newer_target_published_mid_download_supersedes_the_update_and_no_blob_is_fetched_twice(
        factory, engine, hwid, device, tmp_path: Path) -> None:
    device.drop_ins.append(drop_in(tmp_path / "z-rate.toml", '[pacman]\ndownload_rate_limit = "3M"\n'))
    publish_version(factory, hwid, 2, V2, big_mb=64)
    count, log = gets(factory), tmp_path / "daemon.log"
    with start_daemon(device, log) as daemon:
        wait_for(lambda: largest_partial(device) > 6 * MIB, 120, "the big layer of version 2 partly fetched")
        publish_version(factory, hwid, 3, V3, big_mb=64)  # the same big layers, ticker instead of pair
        wait_for(lambda: version(device) == 3, 300, "version 3 running")
        assert stop(daemon, 30) == 0
    text = log.read_text()
    superseded, completed = status(device)["history"][1], status(device)["history"][0]
    assert (superseded["version"], superseded["outcome"]) == (2, "cancelled"), text
    assert re.fullmatch(r"superseded by \S+-3 \(version 3\)", superseded["reason"])
    assert (completed["version"], completed["outcome"]) == (3, "completed")
    assert superseded["correlation_id"] != completed["correlation_id"], "each attempt its own correlation id"
    assert projects(engine) == {"shellhttpd", "ticker"} and "v2" in sample_page()

    sizes, writes = blob_sizes(device), blob_writes_since(factory, count)
    again = {d: w for d, w in writes.items() if any(n >= sizes[d] for n in w[1:])}
    assert not again, f"fetched again from zero (bytes of each GET): {again}"
    resumed = {d: w for d, w in writes.items() if len(w) > 1}
    assert resumed, "the cancel cut a download short, and the newer update resumed it"
    for digest, w in resumed.items():  # what the registry wrote that never arrived sat in TCP buffers
        assert sum(w) <= sizes[digest] + SOCKET_SLACK, (digest, w)
    closing = [e for e in events_of(factory, device) if e["event"]["correlationId"] == superseded["correlation_id"]][-1]
    assert closing["eventType"]["id"] == "EcuDownloadCompleted" and closing["event"]["success"] is False
    assert "cancelled: superseded by" in closing["event"]["details"]


# --- install windows -------------------------------------------------------------------------------


class FakeClock:
    """A clock the test sets; a sleep moves it on at once and is recorded; `stop_after` sleeps, it
    stops the daemon as a SIGTERM would."""

    def __init__(self, now: datetime, on_sleep, stop_after: int):
        self.time, self.on_sleep, self.stop_after, self.sleeps = now, on_sleep, stop_after, []

    def now(self) -> datetime:
        return self.time

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.on_sleep(self)
        if len(self.sleeps) >= self.stop_after:
            raise Stopped(signal.SIGTERM)
        self.time += timedelta(seconds=seconds)

    def wake(self) -> None:
        pass


def test_outside_its_install_window_the_daemon_downloads_at_once_and_installs_when_the_window_opens(
        factory, engine, hwid, device, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FIOUP_FLOW_RETRY_SECONDS", "3")
    device.drop_ins.append(drop_in(tmp_path / "z-window.toml", '[uptane]\npolling_seconds = 86400\n'
                                   '[pacman]\ninstall_window = "23:00-01:00,02:00-04:00"\n'))
    publish_version(factory, hwid, 2, V2, big_mb=8)
    before, count = containers(engine), gets(factory)
    seen = []

    def look(clock: FakeClock) -> None:
        seen.append((clock.now(), containers(engine), gets(factory), status(device)["in_progress"]))

    noon = datetime(2026, 11, 27, 12, 0).astimezone()
    clock = FakeClock(noon, look, stop_after=2)
    daemon = Daemon(lambda: Config.load((str(device.cfg), *map(str, device.drop_ins))), clock=clock)
    assert daemon.run(renew=False) == 0

    waiting_at, waiting_containers, fetched, in_progress = seen[0]
    assert clock.sleeps[0] == (datetime(2026, 11, 27, 23, 0).astimezone() - noon).total_seconds(), \
        "asleep until the window opens"
    assert waiting_containers == before, "nothing was restarted outside the window"
    assert fetched > count and in_progress["version"] == 2
    assert in_progress["install_due"] is not None, "status says when the install is due"
    assert seen[1][2] == fetched, "installed inside the window from the store: nothing fetched again"
    assert version(device) == 2 and "v2" in sample_page()
    assert status(device)["history"][0]["outcome"] == "completed"


# --- a factory out of reach; attempts --------------------------------------------------------------


def gateway_proxy(factory, device: Device, tmp_path: Path) -> FaultProxy:
    """Route the device's gateway traffic through a proxy the test can cut."""
    proxy = FaultProxy(int(factory.info["gateway"].rsplit(":", 1)[1]), lifetime=400)
    device.drop_ins.append(drop_in(tmp_path / "z-gateway.toml", f'[tls]\nserver = "https://127.0.0.1:{proxy.port}"\n'))
    return proxy


def cut(proxy: FaultProxy) -> None:
    """The factory goes away: new connections refused, open ones reset."""
    proxy.set(close_on_accept=10**9, reset_after=1)


def test_a_factory_out_of_reach_is_backed_off_from_and_once_back_the_update_goes_through_nothing_lost(
        factory, engine, hwid, device, tmp_path: Path) -> None:
    device.drop_ins.append(drop_in(tmp_path / "z-poll.toml", "[uptane]\npolling_sec = 16\n"))
    log = tmp_path / "daemon.log"
    with gateway_proxy(factory, device, tmp_path) as proxy:
        cut(proxy)
        with start_daemon(device, log) as daemon:
            wait_for(lambda: log.read_text().count("cycle failed") >= 4, 120, "four failed cycles")
            publish_version(factory, hwid, 2, V2)
            proxy.clear()
            wait_for(lambda: version(device) == 2, 180, "version 2 running")
            assert stop(daemon, 30) == 0
    text = log.read_text()
    waits = [float(w) for w in re.findall(r"cycle failed \(exit \d+\): .*backing off, next check in ([\d.]+) s", text)]
    assert waits[:4] == sorted(waits[:4]) and waits[3] >= 4 and max(waits) <= 16, text
    assert "starting afresh" in text and text.count("config: polling every") == 2, \
        "after the update, the daemon went on in a fresh process"
    assert "v2" in sample_page()
    got = [e["eventType"]["id"] for e in events_of(factory, device)
           if e["event"]["correlationId"] == status(device)["history"][0]["correlation_id"]]
    assert got[0] == "UpdateInitStarted" and got[-1] == "EcuInstallationCompleted" and len(got) == len(set(got))
    failed_checks = [e for e in events_of(factory, device) if e["eventType"]["id"] == "MetadataUpdateCompleted"
                     and e["event"]["success"] is False]
    assert len(failed_checks) >= 4, "the failed checks were reported once the gateway was back"


def test_after_max_attempts_failed_the_daemon_gives_the_update_up_and_the_device_stays_on_its_target(
        factory, engine, hwid, device, tmp_path: Path) -> None:
    before, log = containers(engine), tmp_path / "daemon.log"
    with gateway_proxy(factory, device, tmp_path) as proxy:
        stopped_mid_download(factory, hwid, device, tmp_path, "max_attempts = 2\n")
        cut(proxy)  # the registry's credentials come from the gateway: every fetch fails now
        with start_daemon(device, log) as daemon:
            wait_for(lambda: "cycle gave-up" in log.read_text(), 180, "the update given up")
            count = gets(factory)
            proxy.clear()
            wait_for(lambda: "cycle idle" in log.read_text(), 60, "an idle cycle, the gateway back")
            assert stop(daemon, 30) == 0
    text = log.read_text()
    assert "attempt 1 of 2" in text and "cycle gave-up: gave up after 2 failed attempts" in text, text
    assert containers(engine) == before, "version 1 never stopped"
    assert version(device) == 1
    given_up = status(device)["history"][0]
    assert (given_up["version"], given_up["outcome"]) == (2, "cancelled"), text
    assert given_up["reason"].startswith("gave up after 2 failed attempts at "), text
    assert gets(factory) == count, "version 2 not tried again"
    assert largest_partial(device) == 0, "its partial downloads dropped"


# --- signals ---------------------------------------------------------------------------------------


def test_sigterm_while_asleep_exits_0_at_once_and_sighup_reloads_the_config(device, tmp_path: Path) -> None:
    poll = drop_in(tmp_path / "z-poll.toml", "[uptane]\npolling_sec = 300\n")
    device.drop_ins.append(poll)
    log = tmp_path / "daemon.log"
    with start_daemon(device, log) as daemon:
        wait_for(lambda: "cycle idle" in log.read_text(), 60, "an idle cycle")
        poll.write_text("[uptane]\npolling_sec = 200\n")
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: log.read_text().count("cycle idle") == 2, 60, "a cycle at once after SIGHUP")
        assert "config: polling every 200 s" in log.read_text()
        poll.write_text("[uptane]\npolling_sec = never\n")
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: "config not reloaded" in log.read_text(), 60, "a bad config refused")
        began = time.monotonic()
        assert stop(daemon, 10) == 0
        assert time.monotonic() - began < 3


def test_sigterm_mid_download_stops_at_the_next_chunk_exit_0_and_the_update_resumes(
        factory, engine, hwid, device, tmp_path: Path) -> None:
    before = containers(engine)
    stopped_mid_download(factory, hwid, device, tmp_path)
    kept = largest_partial(device)
    assert kept > 4 * MIB and containers(engine) == before
    assert status(device)["in_progress"]["version"] == 2, "left resumable"
    done = device.run("daemon", "--once")
    assert done.returncode == 0, done.stderr
    assert version(device) == 2


def test_with_the_engine_out_of_reach_a_cycle_fails_with_exit_7_and_says_so(device) -> None:
    done = device.run("daemon", "--once", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert done.returncode == 7, done.stderr
    assert "the Docker engine at unix:///nonexistent/docker.sock does not answer" in done.stderr
    assert "Traceback" not in done.stderr
