"""The daemon's timing: the interval with jitter, backoff after failed cycles, and its config keys."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from support import fioup_flow

from fioup_flow.config import Config
from fioup_flow.daemon import BACKOFF_BASE_S, JITTER, Policy
from fioup_flow.errors import UsageError


def config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "sota.toml"
    path.write_text(text)
    return Config.load((str(path),))


def test_the_interval_is_fioups_key_or_aktualizr_lites_else_300(tmp_path: Path) -> None:
    assert config(tmp_path, "").polling_seconds == 300
    assert config(tmp_path, "[uptane]\npolling_sec = 60\n").polling_seconds == 60
    assert config(tmp_path, '[uptane]\npolling_seconds = "30"\npolling_sec = 60\n').polling_seconds == 30


def test_a_drop_in_setting_either_key_overrides_the_other_key_in_sota_toml(tmp_path: Path) -> None:
    """Registration writes fioup's key; an operator's drop-in may use aktualizr-lite's."""
    sota = tmp_path / "sota.toml"
    sota.write_text('[uptane]\npolling_seconds = "300"\n')
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "z-50-poll.toml").write_text("[uptane]\npolling_sec = 60\n")
    assert Config.load((str(sota), str(tmp_path / "conf.d"))).polling_seconds == 60


@pytest.mark.parametrize("value", ['"soon"', "0", "-5", "1.5", "true"])
def test_an_invalid_interval_is_an_error_naming_the_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(UsageError, match="uptane.polling_sec"):
        Policy.from_config(config(tmp_path, f"[uptane]\npolling_sec = {value}\n"))


def test_max_attempts_defaults_to_3_as_fioups_daemon(tmp_path: Path) -> None:
    assert config(tmp_path, "").max_attempts == 3
    assert config(tmp_path, "[pacman]\nmax_attempts = 5\n").max_attempts == 5
    with pytest.raises(UsageError, match="pacman.max_attempts"):
        config(tmp_path, "[pacman]\nmax_attempts = 0\n").max_attempts  # noqa: B018


def test_between_good_cycles_the_daemon_sleeps_the_interval_plus_up_to_a_tenth() -> None:
    policy, rand = Policy(300, 3, None), random.Random(1)
    pauses = [policy.pause(0, rand) for _ in range(1000)]
    assert 300 <= min(pauses) and max(pauses) <= 300 * (1 + JITTER)
    assert max(pauses) - min(pauses) > 25, "spread, so that a fleet does not poll in step"


def test_after_failed_cycles_it_backs_off_doubling_from_15_s_up_to_the_interval() -> None:
    policy, rand = Policy(300, 3, None), random.Random(2)
    for failures, ceiling in [(1, 15), (2, 30), (3, 60), (4, 120), (5, 240), (6, 300), (40, 300)]:
        pauses = [policy.pause(failures, rand) for _ in range(200)]
        assert ceiling / 2 <= min(pauses) and max(pauses) <= ceiling, failures
    assert BACKOFF_BASE_S == 15


def test_a_short_interval_backs_off_from_an_eighth_of_it() -> None:
    policy, rand = Policy(16, 3, None), random.Random(3)
    for failures, ceiling in [(1, 2), (2, 4), (3, 8), (4, 16), (5, 16)]:
        pauses = [policy.pause(failures, rand) for _ in range(200)]
        assert ceiling / 2 <= min(pauses) and max(pauses) <= ceiling, failures


def test_the_daemon_refuses_to_start_on_an_invalid_key_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "sota.toml"
    path.write_text('[tls]\nserver = "https://gateway"\n[pacman]\ninstall_window = "2am-4am"\n')
    done = fioup_flow(["-c", str(path), "daemon", "--once"], timeout=60)
    assert done.returncode == 2, done.stderr
    assert "pacman.install_window: '2am-4am' is not a range HH:MM-HH:MM" in done.stderr
    assert isinstance(done, subprocess.CompletedProcess)
