"""``ghostmesh run [--config FILE] [--watch DIR]... [--no-tray] [engine options]``: the daemon.

Order matters for the user: the config is checked first (a bad key is a one-line error naming it),
then the single-instance lock (a second start says so at once and exits 2, before any model loads),
then the engine (models loaded once), then the daemon runs until SIGTERM, Ctrl-C or the tray's Quit.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import DaemonConfig, ensure_watch_folders, load_config
from ..errors import UsageError
from ..report import ReportEntry
from .engine_options import add_engine_options, engine_overrides_from_args
from .env import Env, ExitStatus

log = logging.getLogger("ghostmesh.daemon")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="watch folders and protect every new photo (the daemon)",
        description="Watch folders and write a protected copy of every new photo beside it. Settings come "
        "from config.toml in your user config folder (created with commented defaults on first run); "
        "options given here override it.",
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="config file (default: the user config folder's config.toml)")
    parser.add_argument("--watch", type=Path, action="append", metavar="DIR",
                        help="watch this folder instead of the configured ones (repeatable)")
    parser.add_argument("--no-tray", action="store_true", help="do not show a tray icon")
    add_engine_options(parser)
    parser.set_defaults(handler=run)


def _config_from_args(args: argparse.Namespace) -> DaemonConfig:
    config = load_config(args.config)
    if args.watch:
        for folder in args.watch:
            if not folder.expanduser().is_dir():
                raise UsageError(f"ghostmesh run: --watch {folder}: not an existing folder")
        return config.with_folders(args.watch)
    ensure_watch_folders(config)
    return config


def retry_settings(current, weak_preset: str):
    """The settings for the one retry of a weak photo, or ``None`` (``weak_preset = "off"``).

    ``""`` (or the current preset's own name): the same preset, so the same visibility budgets, with
    a different seed and twice the steps. Another preset's name (``"panic"``, an opt-in: it may be
    visible): that preset's flow limit, penalty and steps, keeping whatever the user had set away
    from the current preset's values, and a different seed too.
    """
    from dataclasses import replace

    from ..engine.settings import PRESETS, settings_for

    if weak_preset == "off":
        return None
    seed = (current.seed + 1) % 2**32
    if not weak_preset or weak_preset == current.preset:
        return replace(current, seed=seed, steps=current.steps * 2)
    preset_keys = set(PRESETS[current.preset])
    values = {k: v for k, v in current.to_dict().items()
              if k != "preset" and not (k in preset_keys and v == PRESETS[current.preset][k])}
    values["targets"] = tuple(values["targets"])
    # the weights too, target by target: the current preset's own (panic weighs face 3) are not the user's
    own = dict(PRESETS[current.preset].get("target_weights", ()))
    values["target_weights"] = tuple((t, w) for t, w in current.target_weights if own.get(t) != w)
    values["seed"] = seed
    return settings_for(weak_preset, **values)


def describe_retry(current, retry) -> str:
    """``the same stealth preset, seed 1 and 240 steps`` / ``the panic preset (may be visible), ...``."""
    if retry.preset == current.preset:
        return f"the same {retry.preset} preset, seed {retry.seed} and {retry.steps} steps"
    return f"the {retry.preset} preset (may be visible), seed {retry.seed} and {retry.steps} steps"


def make_processor(protector, config: DaemonConfig):
    """Bind ``Protector.protect_file`` to the daemon's output options.

    A weak photo (its copy did not reach every target's goal within the budgets; nothing was written)
    is protected once more with :func:`retry_settings` (``retry.weak_preset``); that second report is
    the one recorded, with a note saying what was retried. Still weak: nothing is written, unless
    ``output.keep_weak``.
    """
    sub = config["output.subfolder"]
    weak_preset = config["retry.weak_preset"]
    keep_weak = config["output.keep_weak"]

    def process(src: Path, *, should_stop, progress) -> ReportEntry:
        if sub:
            (src.parent / sub).mkdir(exist_ok=True)
        options = dict(
            out_dir=Path(sub) if sub else None,
            suffix=config["output.suffix"],
            strip_gps=config["output.strip_gps"],
            max_megapixels=config["output.max_megapixels"],
            raw_output=config["output.raw_output"],
            progress=progress,
            should_stop=should_stop,
        )
        current = protector.settings
        retry = retry_settings(current, weak_preset)
        # With a retry to come, the first weak copy is never written: only the last attempt may keep one.
        entry = protector.protect_file(src, keep_weak=keep_weak and retry is None, **options)
        if entry.status != "weak" or retry is None:
            return entry
        what = describe_retry(current, retry)
        log.warning("%s: weak (%s); protecting it once more with %s", src, entry.reason, what)
        second = protector.protect_file(src, settings=retry, keep_weak=keep_weak, **options)
        second.notes.append(f"retried once with {what}: the first copy was weak ({entry.reason})")
        return second

    return process


def run(args: argparse.Namespace, env: Env) -> ExitStatus:
    from ..daemon import paths
    from ..daemon.app import Daemon, DaemonPaths
    from ..daemon.lock import AlreadyRunning, InstanceLock
    from ..daemon.logsetup import close_logging, setup_logging

    config = _config_from_args(args)
    settings = config.engine_settings(engine_overrides_from_args(args))
    where = DaemonPaths()
    lock = InstanceLock(paths.lock_path())
    try:
        lock.acquire()
    except AlreadyRunning as e:
        env.stderr.write(f"ghostmesh: {e}\n")
        return ExitStatus.USAGE
    try:
        setup_logging(where.log, config["log.level"], env.stderr)
        log.info("config: %s", config.source or "(defaults)")
        log.info("loading the engine (%s, %d steps, device %s)", settings.preset, settings.steps, settings.device)
        from ..pipeline import Protector

        protector = Protector(settings, warn=log.warning)
        models = {"targets": list(protector.target_names), "device": str(protector.device),
                  "preset": settings.preset, "steps": settings.steps, "warnings": list(protector.warnings)}
        log.info("engine ready: targets %s on %s", ", ".join(models["targets"]), models["device"])
        daemon = Daemon(config, make_processor(protector, config), models=models, tray=not args.no_tray, where=where,
                        protector=protector)
        return ExitStatus(daemon.run())
    finally:
        close_logging()
        lock.release()
