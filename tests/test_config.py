"""The config is read and merged the way fioup reads it."""

import json
from pathlib import Path

import pytest
from support import fioup_flow, register

from fioup_flow.config import Config, cfg_dirs_from_env
from fioup_flow.errors import UsageError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_greatest_file_name_wins_key_by_key(tmp_path: Path) -> None:
    sota = write(tmp_path / "var/sota.toml", '[pacman]\ntags = "main"\ncompose_apps = "a,b"\n[tls]\nserver = "https://gw"\n')
    write(tmp_path / "etc/z-50-fioctl.toml", '[pacman]\ncompose_apps = "c"\n')
    config = Config.load((str(sota), str(tmp_path / "etc")))
    assert config.compose_apps == ("c",)
    assert config.tags == ("main",)
    assert config.server == "https://gw"


def test_compose_apps_unset_means_all_and_blank_means_none(tmp_path: Path) -> None:
    assert Config.load((str(write(tmp_path / "a.toml", "[pacman]\n")),)).compose_apps is None
    assert Config.load((str(write(tmp_path / "b.toml", '[pacman]\ncompose_apps = " "\n')),)).compose_apps == ()


def test_relative_paths_are_under_storage_path(tmp_path: Path) -> None:
    cfg = write(tmp_path / "sota.toml", f'[storage]\npath = "{tmp_path}"\n[import]\ntls_cacert_path = "root.crt"\n')
    config = Config.load((str(cfg),))
    assert config.ca_cert == tmp_path / "root.crt"
    assert config.reset_apps_root == tmp_path / "reset-apps"


def test_environment_overrides_the_search_path() -> None:
    assert cfg_dirs_from_env({"FIOUP_FLOW_CFG_DIRS": "/x.toml, /y"}) == ("/x.toml", "/y")
    assert cfg_dirs_from_env({}) == ("/usr/lib/sota/conf.d", "/var/sota/sota.toml", "/etc/sota/conf.d/")


def test_a_download_rate_limit_reads_like_a_person_writes_it(tmp_path: Path) -> None:
    cfg = write(tmp_path / "sota.toml", '[pacman]\ndownload_rate_limit = "20M"\n')
    assert Config.load((str(cfg),)).download_rate == 20_000_000
    assert Config.load((str(write(tmp_path / "b.toml", "")),)).download_rate is None


def test_the_health_window_is_15_s_unless_set_and_a_bad_value_is_a_clear_error(tmp_path: Path) -> None:
    def window(text: str) -> float:
        return Config.load((str(write(tmp_path / "sota.toml", f"[pacman]\n{text}\n")),)).health_window

    assert window("") == 15.0
    assert window("health_window = 0") == 0.0
    assert window('health_window = "30"') == 30.0
    for bad in ('health_window = "soon"', "health_window = -1", "health_window = 86400"):
        with pytest.raises(UsageError, match="pacman.health_window"):
            window(bad)


def test_the_engine_restart_command_is_split_as_a_shell_would_or_taken_as_a_list(tmp_path: Path) -> None:
    def command(text: str) -> tuple[str, ...]:
        return Config.load((str(write(tmp_path / "sota.toml", f"[pacman]\n{text}\n")),)).engine_restart_command

    assert command("") == ()
    assert command('engine_restart_command = "systemctl restart \'docker.service\'"') == (
        "systemctl", "restart", "docker.service")
    assert command('engine_restart_command = ["/usr/bin/my restart", "--now"]') == ("/usr/bin/my restart", "--now")


def test_no_config_found_is_exit_3_naming_each_path_searched_not_an_unregistered_device(tmp_path: Path) -> None:
    searched = {"FIOUP_FLOW_CFG_DIRS": f"/nonexistent,{tmp_path}"}
    for command in ("status", "resume", "check"):
        done = fioup_flow([command], env=searched)
        assert done.returncode == 3, (command, done.stdout)
        assert "no config found: searched /nonexistent (does not exist); " \
               f"{tmp_path} (a folder with no *.toml file)" in done.stderr
        assert "Current: none" not in done.stdout
    data = json.loads(fioup_flow(["status", "--json"], env=searched).stdout)
    assert data["exit_code"] == 3 and data["error"].startswith("no config found: searched /nonexistent")


def test_register_needs_no_config_to_be_found(factory, tmp_path: Path) -> None:
    done = register(factory.info, tmp_path / "sota", env={"FIOUP_FLOW_CFG_DIRS": "/nonexistent"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "sota" / "sota.toml").is_file()


def test_compose_env_holds_what_the_device_sets_for_compose_and_nothing_malformed(tmp_path: Path) -> None:
    def compose_env(text: str) -> dict[str, str]:
        return Config.load((str(write(tmp_path / "sota.toml", f"[compose_env]\n{text}\n")),)).compose_env

    assert Config.load((str(write(tmp_path / "a.toml", "")),)).compose_env == {}
    assert compose_env('PORT = 8080\nGREETING = "hi there"\nDEBUG = true') == {
        "PORT": "8080", "GREETING": "hi there", "DEBUG": "true"}
    for bad in ('"NOT-A-NAME" = "x"', "LIST = [1, 2]"):
        with pytest.raises(UsageError, match="compose_env"):
            compose_env(bad)


def test_the_image_s_roots_are_in_usr_lib_sota_tuf_unless_uptane_metadata_path_says_otherwise(tmp_path: Path) -> None:
    assert Config.load((str(write(tmp_path / "a.toml", "")),)).tuf_roots_path == Path("/usr/lib/sota/tuf")
    cfg = write(tmp_path / "b.toml", '[storage]\nuptane_metadata_path = "/opt/image/tuf"\n')
    assert Config.load((str(cfg),)).tuf_roots_path == Path("/opt/image/tuf")


def test_tuf_is_the_default_and_plain_mode_must_be_asked_for_by_name(tmp_path: Path) -> None:
    assert Config.load((str(write(tmp_path / "a.toml", "")),)).tuf_mode == "tuf"
    assert Config.load((str(write(tmp_path / "b.toml", '[pacman]\ntuf_mode = "Plain"\n')),)).tuf_mode == "plain"
    with pytest.raises(UsageError, match="pacman.tuf_mode"):
        _ = Config.load((str(write(tmp_path / "c.toml", '[pacman]\ntuf_mode = "off"\n')),)).tuf_mode
