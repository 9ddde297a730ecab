"""What an update shows while it runs, judged by the world: the registry's log (the bytes it sent),
the engine's containers (the apps), the process's exit code, the checkpoint store's files.

`--progress json` is an interface other programs drive a screen or an LED from; the journal mode
is what systemd keeps of an update; `status --watch` is how a person follows an update another
process runs. The devices here follow a release with a large layer fetched at a limited rate, so
that each download lasts long enough to be followed (LAYER_MB at RATE: about 8 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import BIN, Device, fresh_device, publish, registry_blob_gets

from fioup_flow.checkpoint import store_path
from fioup_flow.cli.journal import PERIOD_S
from fioup_flow.progress import PHASES
from fioup_flow.storeview import StoreView

pytestmark = [pytest.mark.factory, pytest.mark.docker]

TAG = "progress"
HWID = "progress-linux"  # a hardware id of its own, so that its version 1 does not replace the shared releases'
LAYER_MB = 16
RATE = "2M"
APPS = {"shellhttpd": "shellhttpd/v1", "pair": "pair/v1"}


@pytest.fixture(scope="session")
def slow_release(factory) -> str:
    publish(factory.home.root, 1, APPS, TAG, "--layer-mb", f"shellhttpd={LAYER_MB}", "--hwid", HWID)
    return TAG


@pytest.fixture
def slow_device(factory, slow_release, engine, tmp_path: Path) -> Iterator[Device]:
    """A fresh device on the slow release, its downloads limited to RATE."""
    with fresh_device(factory, engine, tmp_path / "sota", slow_release, HWID) as device:
        (tmp_path / "rate.toml").write_text(f'[pacman]\ndownload_rate_limit = "{RATE}"\n')
        device.drop_ins.append(tmp_path / "rate.toml")
        yield device


def start(device: Device, *args: str) -> subprocess.Popen:
    cfg_dirs = ",".join(str(p) for p in [device.cfg, *device.drop_ins])
    return subprocess.Popen([str(BIN / "fioup-flow"), "-c", cfg_dirs, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, FIOUP_FLOW_RETRY_SECONDS="3"))


class Lines:
    """Every line a stream carries, with the time it arrived, read as it comes."""

    def __init__(self, stream) -> None:
        self.got: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=lambda: self.got.extend((time.monotonic(), line.rstrip("\n"))
                                                                      for line in stream), daemon=True)
        self.reader.start()

    def all(self) -> list[tuple[float, str]]:
        self.reader.join(timeout=30)
        return self.got


def ended(process: subprocess.Popen) -> tuple[int, list[dict], str]:
    """Wait for `process`; its exit code, its stdout parsed line by line as JSON (every line must
    parse), and its stderr."""
    out, err = process.communicate(timeout=300)
    return process.returncode, [json.loads(line) for line in out.splitlines()], err


def metadata_fetched(device: Device, factory) -> int:
    """Plan once without changing anything (`--dry-run` fetches the manifests and bundles a plan
    reads, as the update's own planning would); from the registry log's length returned on, the
    log holds the update's downloads alone."""
    done = device.run("apply", "--dry-run")
    assert done.returncode == 0, done.stderr
    return len(registry_blob_gets(factory.home))


def projects(engine) -> set[str]:
    return {c.labels.get("com.docker.compose.project") for c in engine.containers.list()}


def assert_in_order(lines: list[dict]) -> None:
    """Within each plan the phase only moves forward, and bytes done never go back."""
    for plan_id in {line["plan_id"] for line in lines if line["plan_id"]}:
        of_plan = [line for line in lines if line["plan_id"] == plan_id]
        phases = [PHASES.index(line["phase"]) for line in of_plan]
        assert phases == sorted(phases), [line["phase"] for line in of_plan]
        done = [line["bytes_done"] for line in of_plan]
        assert done == sorted(done), done


def assert_the_registry_sent(lines: list[dict], fetched: list[tuple[str, int]]) -> None:
    """The totals are what the registry's log shows the update fetched, in every line of the plan."""
    totals = {(line["bytes_total"], line["blobs_total"]) for line in lines if line["plan_id"]}
    assert totals == {(sum(size for _, size in fetched), len({digest for digest, _ in fetched}))}, (totals, fetched)


def test_the_json_lines_of_an_update_are_what_the_registry_and_the_engine_show(factory, slow_device, engine) -> None:
    before = metadata_fetched(slow_device, factory)
    code, lines, err = ended(start(slow_device, "apply", "--progress", "json"))
    fetched = registry_blob_gets(factory.home)[before:]

    assert code == 0, err
    assert {line["format_version"] for line in lines} == {1}
    summary = lines[-1]
    assert (summary["event"], summary["outcome"], summary["exit_code"]) == ("summary", "completed", code)
    assert [line["event"] for line in lines].count("summary") == 1
    assert_the_registry_sent(lines, fetched)
    assert summary["bytes_done"] == summary["bytes_total"] > LAYER_MB * 1_000_000
    assert_in_order(lines)
    assert [line["phase"] for line in lines if line["event"] == "plan"] == ["plan"]
    assert set(PHASES) <= {line["phase"] for line in lines}
    apps = projects(engine)
    assert apps == set(APPS)
    assert all(set(line["apps"]) == apps for line in lines if line["plan_id"]), "an app of the Target is missing"
    assert summary["apps"] == {app: "done" for app in apps}
    downloading = [line for line in lines if line["event"] == "progress"]
    assert any(line["rate_bps"] and line["eta_s"] for line in downloading), "no rate nor time left while fetching"
    assert "Update" in err, "what the command says goes to stderr, leaving stdout to the JSON lines"


def test_a_stopped_update_says_so_with_its_exit_code_and_resume_counts_what_it_had_fetched(
        factory, slow_device) -> None:
    before = metadata_fetched(slow_device, factory)
    process = start(slow_device, "apply", "--progress", "json")
    for line in process.stdout:
        if json.loads(line)["bytes_done"] > 2_000_000:  # well into the large layer
            process.send_signal(signal.SIGTERM)
            break
    code, lines, _ = ended(process)
    assert code == 143
    assert (lines[-1]["event"], lines[-1]["outcome"], lines[-1]["exit_code"]) == ("summary", "interrupted", 143)
    kept = lines[-1]["bytes_done"]

    code, resumed, err = ended(start(slow_device, "resume", "--progress", "json"))
    fetched = registry_blob_gets(factory.home)[before:]
    assert code == 0, err
    assert (resumed[-1]["outcome"], resumed[-1]["exit_code"]) == ("completed", 0)
    first = next(line for line in resumed if line["event"] == "plan")
    assert first["bytes_done"] >= kept > 0, "the resumed update counts the bytes its first run fetched"
    assert first["bytes_total"] == resumed[-1]["bytes_done"] == lines[-1]["bytes_total"]
    assert first["blobs_total"] == len({digest for digest, _ in fetched})


def test_the_journal_gets_a_line_per_node_and_a_progress_line_every_few_seconds_never_one_per_chunk(
        slow_device) -> None:
    process = start(slow_device, "apply")  # stderr is a pipe, as under systemd: the journal's view
    lines = Lines(process.stderr)
    process.stdout.read()
    assert process.wait(timeout=300) == 0
    got = lines.all()

    nodes = int(next(text for _, text in got if text.startswith("Updating to")).rsplit(": ", 1)[1].split()[0])
    done = [text for _, text in got if text.startswith("done ")]
    progress = [(at, text) for at, text in got if text.startswith("progress ")]
    assert done and done[-1].startswith(f"done    [{nodes}/{nodes}]")
    assert len(done) <= nodes
    big = next(at for at, text in reversed(got) if text.startswith("done ") and " fetch:" in text)  # the layer
    print(f"\n{len(got)} lines; progress lines at "
          + ", ".join(f"{at - progress[0][0]:.1f} s" for at, _ in progress) + f"; the layer done at {big - progress[0][0]:.1f} s")
    assert len(progress) >= 2, "a download of several seconds says how it goes"
    gaps = [b - a for (a, _), (b, _) in zip(progress, progress[1:])]
    assert min(gaps) >= PERIOD_S - 0.5, gaps
    assert len(progress) <= (big - progress[0][0]) / PERIOD_S + 2
    assert len(got) == 1 + len(done) + len(progress) + 1, "a line that is neither a node's nor progress"


def files(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_status_watch_follows_an_update_another_process_runs_to_its_end_without_writing(
        factory, slow_device, engine) -> None:
    before = metadata_fetched(slow_device, factory)
    view = StoreView(store_path(slow_device.sota_dir / "flow"))
    runner = start(slow_device, "apply", "--progress", "off")
    deadline = time.monotonic() + 60
    while view.current_plan_id() is None:
        assert time.monotonic() < deadline and runner.poll() is None, "the update never began"
        time.sleep(0.05)
    code, lines, err = ended(start(slow_device, "status", "--watch", "--json"))
    watch_ended_in_progress = view.current_plan_id()
    assert runner.wait(timeout=300) == 0
    fetched = registry_blob_gets(factory.home)[before:]

    assert code == 0, err
    assert watch_ended_in_progress is None, "the watch ended while the update was still in progress"
    summary = lines[-1]
    assert (summary["event"], summary["outcome"], summary["exit_code"], summary["phase"]) == (
        "summary", "completed", 0, "done")
    assert_the_registry_sent(lines, fetched)
    assert_in_order(lines)
    assert set(summary["apps"]) == projects(engine) == set(APPS)
    inside = {line["bytes_done"] for line in lines if 1_000_000 < line["bytes_done"] < line["bytes_total"] - 1_000_000}
    assert len(inside) >= 3, f"the large layer's download was not followed as it went: {sorted(inside)}"

    folder = store_path(slow_device.sota_dir / "flow")
    untouched = files(folder)
    done = slow_device.run("status", "--watch")
    assert (done.returncode, done.stdout.strip()) == (0, "No update in progress")
    assert files(folder) == untouched, "a look changed the checkpoint store's files"
