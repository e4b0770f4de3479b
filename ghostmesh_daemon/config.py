"""The daemon's configuration: ``config.toml`` in the platform's user config folder.

One table of keys (:data:`KEYS`) is the single source of truth: it gives every key its default,
its comment, and its check, and the commented file written on first run is generated from it, so
the file a user edits and the rules that read it cannot drift apart. Errors are
:class:`~ghostmesh_daemon.errors.ConfigError` naming the key (``engine.steps``) and the problem.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import platformdirs

from .engine.settings import (BALANCES, MAX_ALIGN_SAMPLES, PRESETS, EngineSettings, parse_target_weights, preset_values,
                              preset_weights, settings_for)
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

APP_NAME = "ghostmesh"
CONFIG_NAME = "config.toml"
DEFAULT_WATCH_FOLDER = "~/Pictures/GhostMesh"


# --- checks: each returns the cleaned value or raises ValueError with the problem -------------------


def _number(lo: float | None = None, hi: float | None = None, *, integer: bool = False) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            raise ValueError(f"expected {'a whole number' if integer else 'a number'}, got {v!r}")
        if lo is not None and v < lo:
            raise ValueError(f"must be at least {lo:g}, got {v:g}")
        if hi is not None and v > hi:
            raise ValueError(f"must be at most {hi:g}, got {v:g}")
        return int(v) if integer else float(v)

    return check


def unit_number(zero: bool = False, one: bool = False) -> Callable[[Any], float]:
    """A number between 0 and 1, with 0 and 1 allowed when ``zero`` and ``one`` say so (the command
    line's engine options check their values with the same rule and words)."""
    span = {(False, False): "a fraction between 0 and 1", (True, False): "a number from 0 up to (not including) 1",
            (False, True): "a number above 0 and at most 1", (True, True): "a number from 0 to 1"}[(zero, one)]

    def check(v: Any) -> float:
        v = _number()(v)
        if not ((0.0 <= v if zero else 0.0 < v) and (v <= 1.0 if one else v < 1.0)):
            raise ValueError(f"must be {span}, got {v:g}")
        return v

    return check


_fraction = unit_number()


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def _string(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {v!r}")
    return v


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(repr(c) for c in choices)}, got {v!r}")
        return v

    return check


def _string_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"expected a list of strings, got {v!r}")
    return tuple(v)


def _targets(v: Any) -> tuple[str, ...]:
    names = _string_list(v)
    if not names:
        raise ValueError("expected at least one target name (or [\"auto\"])")
    return names


def _target_weights(v: Any) -> tuple[tuple[str, float], ...]:
    return parse_target_weights(_string_list(v))


def _device(v: Any) -> str:
    v = _string(v)
    if v.split(":", 1)[0] not in ("auto", "cpu", "cuda", "mps"):
        raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {v!r}")
    return v


def _suffix(v: Any) -> str:
    v = _string(v)
    if not v.startswith(".") or len(v) < 2 or "/" in v or "\\" in v:
        raise ValueError(f"expected a name part starting with a dot such as \".ghost\", got {v!r}")
    return v


def _subfolder(v: Any) -> str:
    v = _string(v)
    if v and (v in (".", "..") or "/" in v or "\\" in v):
        raise ValueError(f"expected a plain folder name (or \"\" for beside the original), got {v!r}")
    return v


def parse_quiet_hours(v: Any) -> tuple[dt.time, dt.time] | None:
    """``"22:00-07:00"`` -> (22:00, 07:00); ``""`` -> no quiet hours. A window may cross midnight."""
    v = _string(v).strip()
    if not v:
        return None
    try:
        start, end = (dt.time.fromisoformat(p.strip()) for p in v.split("-"))
    except ValueError:
        raise ValueError(f"expected \"HH:MM-HH:MM\" (e.g. \"22:00-07:00\") or \"\", got {v!r}") from None
    if start == end:
        raise ValueError(f"start and end are the same ({v!r}); use \"\" for no quiet hours")
    return start, end


@dataclass(frozen=True)
class Key:
    """One config key: where it lives, its default, what it means, how it is checked.

    ``default=None`` means "no value: use the preset's"; such keys are written commented out.
    """

    section: str
    name: str
    default: Any
    comment: str
    check: Callable[[Any], Any]
    example: Any = None  # shown (commented) for keys whose default is None

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"


def _preset_key(name: str, what: str, check: Callable[[Any], Any]) -> Key:
    """An engine key whose default is the preset's when the presets set it (then it has no value of
    its own and is written commented out, with the presets' values in its comment)."""
    per_preset = preset_values(name, quote=True)
    if per_preset is not None:
        return Key("engine", name, None, f"{what} (default: the preset's, {per_preset}).", check,
                   example=PRESETS["stealth"][name])
    default = getattr(EngineSettings(), name)
    return Key("engine", name, default, f"{what}.", check)


KEYS: tuple[Key, ...] = (
    Key("watcher", "settle_seconds", 2.0,
        "A new file is processed only after it has not changed for this long (and decodes).",
        _number(0.1, 600)),
    Key("watcher", "poll_interval", 5.0,
        "Seconds between scans of folders watched with poll = true.", _number(0.5, 3600)),
    Key("watcher", "ignore", [],
        "Extra file name patterns to ignore (shell globs such as \"*_edit.jpg\" or \"Exports/*\"); hidden\n"
        "files, partial downloads (.part, .tmp, .crdownload, ~syncthing~) and our own outputs are always ignored.",
        _string_list),
    Key("output", "subfolder", "",
        "Where protected copies go: \"\" = beside each original, or the name of a subfolder created\n"
        "next to each original (e.g. \"Protected\"). The daemon never processes files in it.",
        _subfolder),
    Key("output", "suffix", ".ghost", "Name part added to outputs: IMG_1.jpg -> IMG_1.ghost.jpg.", _suffix),
    Key("output", "strip_gps", False, "Remove GPS position from the protected copies' EXIF.", _bool),
    Key("output", "raw_output", "jpeg",
        "Camera RAW files are protected into: \"jpeg\" (full quality) or \"tiff16\" (16-bit TIFF).",
        _choice("jpeg", "tiff16")),
    Key("output", "keep_weak", False,
        "Write a weak copy (one that did not reach every target's goal within the budgets) under the\n"
        "protected name anyway; it is still recorded as weak. false = nothing unprotected is written.",
        _bool),
    Key("output", "max_megapixels", 200.0,
        "Refuse photos larger than this (a guard against decompression bombs).", _number(1, 2000)),
    Key("engine", "preset", "stealth",
        "\"stealth\" (hard to see) or \"panic\" (stronger, more visible).", _choice(*PRESETS)),
    Key("engine", "targets", ["auto"],
        "Encoders to protect against: [\"auto\"] = every model that is available (held-out judges such\n"
        "as mobilefacenet only when named), or names such as [\"siglip\", \"face\"] (see `ghostmesh models`).",
        _targets),
    Key("engine", "target_weights", [],
        "Weight of each target in the ensemble, e.g. [\"mobileface=0.5\"] (unnamed targets weigh 1, or their\n"
        f"preset's weight: {preset_weights()}; 0 = measured, not pushed).",
        _target_weights),
    Key("engine", "mode", "tanh", "How the noise is bounded: \"tanh\" or \"pgd\".", _choice("tanh", "pgd")),
    _preset_key("steps", "Optimizer steps per photo", _number(1, 100000, integer=True)),
    _preset_key("noise_limit", "Cap on the per-pixel luma change (the just-noticeable-difference bound is clamped to it), as a fraction of full scale", _fraction),
    _preset_key("flow_limit", "Largest warp, as a fraction of each face's size (0: no warp)", unit_number(zero=True)),
    _preset_key("align_samples",
                "Input diversity: each step also shows the face models each face re-aligned (scaled, turned,\n"
                "shifted, mirrored) this many times at random; slower, transfers further",
                _number(0, MAX_ALIGN_SAMPLES, integer=True)),
    _preset_key("balance",
                "How the face models share each step: \"sum\" (as weighted), \"gradnorm\" (each model's push scaled\n"
                "to the same size) or \"shortfall\" (that size times how far the model still is from its goal)",
                _choice(*BALANCES)),
    _preset_key("detail_gain",
                "0 = the cloak is free noise within the per-pixel bound; above 0 it only makes the photo's own detail\n"
                "locally weaker (by at most this fraction) or stronger (a local retouch: it cannot draw texture on smooth skin)",
                unit_number(zero=True, one=True)),
    _preset_key("lpips_budget", "Perceptual budget (LPIPS) for the whole photo, at its own resolution", _fraction),
    _preset_key("face_lpips_budget", "Perceptual budget (LPIPS) for each face, at its own resolution", _fraction),
    Key("engine", "siglip_model", "google/siglip-base-patch16-384",
        "SigLIP model: a Hugging Face id (downloaded once) or a local folder; the so400m model\n"
        "(\"google/siglip-so400m-patch14-384\") is stronger and wants a GPU.", _string),
    Key("engine", "device", "auto", "\"auto\", \"cpu\", \"cuda\", \"cuda:N\" or \"mps\".", _device),
    Key("engine", "seed", 0, "Random seed (the same photo and settings give the same output).",
        _number(0, 2**32 - 1, integer=True)),
    Key("schedule", "rescan_minutes", 30.0,
        "Full rescan of the watched folders every this many minutes (catches anything missed).",
        _number(1, 7 * 24 * 60)),
    Key("schedule", "quiet_hours", "",
        "Hold new photos during these hours, e.g. \"22:00-07:00\"; \"\" = never.", parse_quiet_hours),
    Key("schedule", "only_on_ac_power", False,
        "Hold new photos while the computer runs on battery.", _bool),
    Key("schedule", "maintenance_hours", 24.0,
        "Ledger upkeep (forget deleted files, compact the database) every this many hours.",
        _number(1, 24 * 365)),
    Key("retry", "max_attempts", 3, "A photo that fails is tried at most this many times in all.",
        _number(1, 100, integer=True)),
    Key("retry", "weak_preset", "",
        "A photo whose copy is weak (a target not reached, a perceptual budget exceeded, or dlib still\n"
        "matching after an upload-like JPEG 75 + 1080 px resize; nothing is written) is protected once\n"
        "more: \"\" = with the same preset, a different seed and twice the steps, within the same\n"
        "visibility budgets; \"panic\" = with the panic preset, stronger but it may be visible;\n"
        "\"off\" = no retry. A copy still weak after the retry is recorded as weak.",
        _choice("", "off", *PRESETS)),
    Key("retry", "backoff_seconds", 60.0,
        "Wait before the first retry; each further retry waits four times longer.", _number(0, 86400)),
    Key("tray", "enabled", True, "Show a tray icon when a desktop is available.", _bool),
    Key("log", "level", "info", "\"debug\", \"info\", \"warning\" or \"error\".",
        _choice("debug", "info", "warning", "error")),
)

SECTION_COMMENTS = {
    "watcher": "How new files are noticed.",
    "output": "Where and how protected copies are written. Originals are never modified.",
    "engine": "The protection itself (the same options as `ghostmesh protect`; command-line options win).",
    "schedule": "When the daemon works.",
    "retry": "What happens to a photo that fails.",
    "tray": "The tray icon.",
    "log": "The log (in the platform's user log folder, and on stderr).",
}

#: Engine keys, mapped onto EngineSettings fields of the same name.
ENGINE_KEYS = tuple(k.name for k in KEYS if k.section == "engine")


@dataclass(frozen=True)
class WatchFolder:
    path: Path
    poll: bool = False


@dataclass(frozen=True)
class DaemonConfig:
    """Everything the daemon reads from its config file, checked and with defaults filled in."""

    source: Path | None
    folders: tuple[WatchFolder, ...]
    values: Mapping[str, Any] = field(default_factory=dict)  # "section.name" -> checked value
    engine_values: Mapping[str, Any] = field(default_factory=dict)  # only keys set (not None)

    def __getitem__(self, dotted: str) -> Any:
        return self.values[dotted]

    def engine_settings(self, overrides: Mapping[str, Any] | None = None) -> EngineSettings:
        """EngineSettings from the file's ``[engine]`` values, with ``overrides`` (the command line)
        winning. The preset is applied first, so any explicit value beats it."""
        values = {**self.engine_values, **(overrides or {})}
        preset = values.pop("preset", "stealth")
        if "targets" in values:
            values["targets"] = tuple(values["targets"])
        return settings_for(preset, **values)

    def with_folders(self, folders: list[Path]) -> "DaemonConfig":
        """The same config watching ``folders`` instead (``--watch``)."""
        return DaemonConfig(
            source=self.source,
            folders=tuple(WatchFolder(Path(p).expanduser().resolve()) for p in folders),
            values=self.values,
            engine_values=self.engine_values,
        )


def default_config_path() -> Path:
    """``config.toml`` in the user config folder (``$XDG_CONFIG_HOME/ghostmesh`` on Linux)."""
    return platformdirs.user_config_path(APP_NAME) / CONFIG_NAME


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def default_config_text() -> str:
    """The commented file written on first run, generated from :data:`KEYS`."""
    lines = [
        "# Ghost Mesh daemon configuration (`ghostmesh run`).",
        "# Every key is optional: a missing key takes the default shown here.",
        "",
        "# A folder to watch, with everything under it. Add another [[watch]] table for each folder.",
        "# poll = true scans the folder every watcher.poll_interval seconds instead of relying on",
        "# change notifications (use it for network shares, where notifications are not delivered).",
        "[[watch]]",
        f"path = {_toml_value(DEFAULT_WATCH_FOLDER)}",
        "poll = false",
    ]
    section = None
    for key in KEYS:
        if key.section != section:
            section = key.section
            lines += ["", f"# {SECTION_COMMENTS[section]}", f"[{section}]"]
        lines += [f"# {line}" for line in key.comment.splitlines()]
        if key.default is None:
            lines.append(f"# {key.name} = {_toml_value(key.example)}")
        else:
            lines.append(f"{key.name} = {_toml_value(key.default)}")
    return "\n".join(lines) + "\n"


def _expand(path: str) -> Path:
    p = Path(os.path.expandvars(path)).expanduser()
    if not p.is_absolute():
        p = Path.home() / p
    return p.resolve()


def _parse_folders(raw: Any, source: Path | None) -> tuple[WatchFolder, ...]:
    if raw is None:
        raw = [{"path": DEFAULT_WATCH_FOLDER}]
    if not isinstance(raw, list):
        raise ConfigError("watch", "expected [[watch]] tables, each with a path", source)
    folders = []
    for i, entry in enumerate(raw, 1):
        where = f"watch[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(where, "expected a table with path = \"...\"", source)
        unknown = set(entry) - {"path", "poll"}
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}", "unknown key (known: path, poll)", source)
        if "path" not in entry:
            raise ConfigError(f"{where}.path", "missing (the folder to watch)", source)
        try:
            path = _expand(_string(entry["path"]))
            poll = _bool(entry.get("poll", False))
        except ValueError as e:
            key = "path" if not isinstance(entry["path"], str) else "poll"
            raise ConfigError(f"{where}.{key}", str(e), source) from None
        folders.append(WatchFolder(path, poll))
    return tuple(folders)


def parse_config(data: Mapping[str, Any], source: Path | None = None) -> DaemonConfig:
    """Check a parsed TOML document and fill in defaults."""
    by_section: dict[str, dict[str, Key]] = {}
    for key in KEYS:
        by_section.setdefault(key.section, {})[key.name] = key
    for section, table in data.items():
        if section == "watch":
            continue
        if section not in by_section:
            known = ", ".join(["watch", *by_section])
            raise ConfigError(section, f"unknown section (known: {known})", source)
        if not isinstance(table, dict):
            raise ConfigError(section, f"expected a [{section}] table", source)
        for name in table:
            if name not in by_section[section]:
                known = ", ".join(by_section[section])
                raise ConfigError(f"{section}.{name}", f"unknown key (known: {known})", source)
    values: dict[str, Any] = {}
    engine_values: dict[str, Any] = {}
    for key in KEYS:
        raw = data.get(key.section, {}).get(key.name, key.default)
        if raw is None:
            value = None
        else:
            try:
                value = key.check(raw)
            except ValueError as e:
                raise ConfigError(key.dotted, str(e), source) from None
        values[key.dotted] = value
        if key.section == "engine" and value is not None and key.name in data.get("engine", {}):
            # Only what the file sets: unset keys keep the preset's value, not our default.
            engine_values[key.name] = value
    config = DaemonConfig(source, _parse_folders(data.get("watch"), source), values, engine_values)
    try:
        config.engine_settings()
    except (TypeError, ValueError) as e:  # pragma: no cover - every engine key is checked above
        raise ConfigError("engine", str(e), source) from None
    return config


def load_config(path: Path | None = None, *, create: bool = True) -> DaemonConfig:
    """Read ``path`` (default: the user config file). The default file is created with commented
    defaults when missing (``create``); an explicitly named file must exist."""
    explicit = path is not None
    path = Path(path) if explicit else default_config_path()
    if not path.exists():
        if explicit:
            raise ConfigError("--config", f"{path} does not exist")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            from .imaging.atomic import atomic_write_bytes

            atomic_write_bytes(path, default_config_text().encode())
        else:
            return parse_config({}, None)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("(syntax)", f"not valid TOML: {e}", path) from None
    except OSError as e:
        raise ConfigError("(file)", f"cannot read: {e.strerror or e}", path) from None
    return parse_config(data, path)


def ensure_watch_folders(config: DaemonConfig) -> None:
    """Create the default watch folder if it is the one configured and missing; any other folder
    must exist (a typo should be an error, not a silently empty watch)."""
    default = _expand(DEFAULT_WATCH_FOLDER)
    for i, folder in enumerate(config.folders, 1):
        if folder.path.is_dir():
            continue
        if folder.path == default:
            folder.path.mkdir(parents=True, exist_ok=True)
            continue
        why = "is not a folder" if folder.path.exists() else "does not exist"
        raise ConfigError(f"watch[{i}].path", f"{folder.path} {why}", config.source)
