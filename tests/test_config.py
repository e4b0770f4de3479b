"""The daemon's config file: created with commented defaults, every key checked and named in errors."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import pytest

from ghostmesh_daemon.cli.engine_options import add_engine_options, engine_overrides_from_args, engine_settings_from_args
from ghostmesh_daemon.config import (
    KEYS,
    default_config_path,
    default_config_text,
    ensure_watch_folders,
    load_config,
    parse_config,
)
from ghostmesh_daemon.engine.settings import PRESETS
from ghostmesh_daemon.errors import ConfigError, UsageError


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "home").mkdir()
    return tmp_path


def test_first_run_writes_the_commented_defaults_to_the_xdg_config_dir(home):
    path = default_config_path()
    assert path == home / "config" / "ghostmesh" / "config.toml"
    config = load_config()
    assert path.is_file() and config.source == path
    assert path.read_text() == default_config_text()
    assert [f.path for f in config.folders] == [home / "home" / "Pictures" / "GhostMesh"]
    ensure_watch_folders(config)
    assert (home / "home" / "Pictures" / "GhostMesh").is_dir()
    # a second load reads the same file and gives the same values
    assert load_config().values == config.values


def test_every_key_is_in_the_file_with_a_comment_above_it():
    text = default_config_text()
    lines = text.splitlines()
    for key in KEYS:
        pattern = re.compile(rf"^(# )?{key.name} = ")
        (i,) = [n for n, line in enumerate(lines) if pattern.match(line)]
        assert lines[i - 1].startswith("# ") and not pattern.match(lines[i - 1]), key.dotted
    # the file parses, and parsing it gives exactly the built-in defaults
    assert parse_config(tomllib.loads(text)).values == parse_config({}).values


def test_engine_keys_map_to_engine_settings_with_the_preset_underneath():
    stealth, panic_values = PRESETS["stealth"], PRESETS["panic"]
    default = parse_config({}).engine_settings()
    assert (default.preset, default.steps, default.flow_limit) == ("stealth", stealth["steps"], stealth["flow_limit"])
    panic = parse_config({"engine": {"preset": "panic"}}).engine_settings()
    assert (panic.steps, panic.flow_limit, panic.vertical_weight, panic.align_samples) == (
        panic_values["steps"], panic_values["flow_limit"], panic_values["vertical_weight"], panic_values["align_samples"])
    assert default.align_samples == stealth["align_samples"]
    assert (default.balance, panic.balance) == (stealth["balance"], panic_values["balance"]) == ("sum", "shortfall")
    assert parse_config({"engine": {"preset": "panic", "balance": "gradnorm"}}).engine_settings().balance == "gradnorm"
    mine = parse_config({"engine": {"preset": "panic", "steps": 7, "targets": ["siglip"], "seed": 3, "align_samples": 1}})
    s = mine.engine_settings()
    assert (s.steps, s.targets, s.seed, s.flow_limit, s.align_samples) == (7, ("siglip",), 3, panic_values["flow_limit"], 1)
    # the command line beats the file
    assert mine.engine_settings({"steps": 2, "preset": "stealth"}).steps == 2
    assert mine.engine_settings({"preset": "stealth"}).flow_limit == stealth["flow_limit"]
    # a key the presets set has no default of its own: an unset key keeps the preset's value
    assert parse_config({})["engine.flow_limit"] is None
    assert parse_config({"engine": {"flow_limit": 0.5}}).engine_settings({"preset": "panic"}).flow_limit == 0.5
    # 0 turns the warp off (a noise limit of 0 would be no cloak at all, and is refused above)
    assert parse_config({"engine": {"flow_limit": 0}}).engine_settings({"preset": "panic"}).flow_limit == 0


def test_weak_photo_keys():
    assert parse_config({})["retry.weak_preset"] == "" and parse_config({})["output.keep_weak"] is False
    assert parse_config({"retry": {"weak_preset": "off"}})["retry.weak_preset"] == "off"
    text = default_config_text()
    assert "keep_weak = false" in text and 'weak_preset = ""' in text and "may be visible" in text
    with pytest.raises(ConfigError, match="retry.weak_preset"):
        parse_config({"retry": {"weak_preset": "loud"}})


@pytest.mark.parametrize(
    "doc, key, problem",
    [
        ({"engine": {"steps": 0}}, "engine.steps", "at least 1"),
        ({"engine": {"steps": 2.5}}, "engine.steps", "whole number"),
        ({"engine": {"preset": "loud"}}, "engine.preset", "'stealth'"),
        ({"engine": {"noise_limit": 1.5}}, "engine.noise_limit", "between 0 and 1"),
        ({"engine": {"noise_limit": 0}}, "engine.noise_limit", "between 0 and 1"),
        ({"engine": {"flow_limit": 1}}, "engine.flow_limit", "up to (not including) 1"),
        ({"engine": {"flow_limit": -0.01}}, "engine.flow_limit", "up to (not including) 1"),
        ({"engine": {"targets": []}}, "engine.targets", "at least one"),
        ({"engine": {"device": "tpu"}}, "engine.device", "cuda"),
        ({"engine": {"stepz": 3}}, "engine.stepz", "unknown key"),
        ({"watcher": {"settle_seconds": "2"}}, "watcher.settle_seconds", "a number"),
        ({"watcher": {"ignore": "*.png"}}, "watcher.ignore", "list of strings"),
        ({"output": {"suffix": "ghost"}}, "output.suffix", "dot"),
        ({"output": {"subfolder": "a/b"}}, "output.subfolder", "plain folder name"),
        ({"schedule": {"quiet_hours": "late"}}, "schedule.quiet_hours", "HH:MM-HH:MM"),
        ({"schedule": {"quiet_hours": "22:00-22:00"}}, "schedule.quiet_hours", "the same"),
        ({"tray": {"enabled": "yes"}}, "tray.enabled", "true or false"),
        ({"log": {"level": "loud"}}, "log.level", "'debug'"),
        ({"retry": {"max_attempts": 0}}, "retry.max_attempts", "at least 1"),
        ({"engine": {"target_weights": ["mobileface"]}}, "engine.target_weights", "NAME=WEIGHT"),
        ({"engine": {"target_weights": ["face=-1"]}}, "engine.target_weights", ">= 0"),
        ({"engine": {"align_samples": 9}}, "engine.align_samples", "at most 8"),
        ({"engine": {"balance": "max"}}, "engine.balance", "'shortfall'"),
        ({"colours": {}}, "colours", "unknown section"),
        ({"watch": [{"poll": True}]}, "watch[1].path", "missing"),
        ({"watch": [{"path": "/x", "pol": True}]}, "watch[1].pol", "unknown key"),
        ({"watch": [{"path": "/x", "poll": "yes"}]}, "watch[1].poll", "true or false"),
    ],
)
def test_bad_values_name_the_key_and_the_problem(doc, key, problem):
    with pytest.raises(ConfigError) as e:
        parse_config(doc, Path("/cfg/config.toml"))
    assert e.value.key == key
    assert problem in e.value.problem
    assert str(e.value).startswith(f"/cfg/config.toml: config key {key!r}: ")


def test_file_errors_name_the_file(home, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[engine\nsteps = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML") as e:
        load_config(bad)
    assert str(bad) in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_watch_folders_expand_and_must_exist_unless_default(home, tmp_path):
    (tmp_path / "home" / "Shared").mkdir()
    cfg = parse_config({"watch": [{"path": "~/Shared", "poll": True}, {"path": str(tmp_path / "nope")}]})
    assert cfg.folders[0].path == tmp_path / "home" / "Shared" and cfg.folders[0].poll
    with pytest.raises(ConfigError) as e:
        ensure_watch_folders(cfg)
    assert e.value.key == "watch[2].path" and "does not exist" in e.value.problem
    assert cfg.with_folders([tmp_path / "home" / "Shared"]).folders[0].poll is False


def test_quiet_hours_parse():
    import datetime as dt

    cfg = parse_config({"schedule": {"quiet_hours": "22:30-07:00"}})
    assert cfg["schedule.quiet_hours"] == (dt.time(22, 30), dt.time(7, 0))
    assert parse_config({})["schedule.quiet_hours"] is None


def test_engine_options_are_shared_with_the_command_line():
    parser = argparse.ArgumentParser()
    add_engine_options(parser)
    args = parser.parse_args(["--preset", "panic", "--steps", "2", "--targets", "siglip, face", "--device", "cuda:1"])
    assert engine_overrides_from_args(args) == {
        "preset": "panic", "steps": 2, "targets": ("siglip", "face"), "device": "cuda:1"}
    s = engine_settings_from_args(args, base={"seed": 5, "steps": 50})
    assert (s.preset, s.steps, s.seed, s.flow_limit) == ("panic", 2, 5, PRESETS["panic"]["flow_limit"])
    assert engine_settings_from_args(parser.parse_args([])).steps == PRESETS["stealth"]["steps"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--noise-limit", "2"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--noise-limit", "0"])
    assert parser.parse_args(["--flow-limit", "0"]).flow_limit == 0.0
    assert parser.parse_args(["--detail-gain", "1"]).detail_gain == 1.0
    with pytest.raises(UsageError):
        engine_settings_from_args(argparse.Namespace(preset=None), base={"preset": "loud"})


def test_ghostmesh_run_names_the_bad_key_and_exits_2(home, tmp_path):
    import io

    from ghostmesh_daemon.cli import main
    from ghostmesh_daemon.cli.env import Env

    cfg = tmp_path / "bad.toml"
    cfg.write_text("[engine]\nsteps = 0\n")
    out, err = io.StringIO(), io.StringIO()
    code = main(["run", "--config", str(cfg), "--no-tray"], Env(stdout=out, stderr=err, environ={}))
    assert code == 2
    assert err.getvalue() == f"ghostmesh: {cfg}: config key 'engine.steps': must be at least 1, got 0\n"
