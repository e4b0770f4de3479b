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


def make_processor(protector, config: DaemonConfig):
    """Bind ``Protector.protect_file`` to the daemon's output options.

    A copy reported weak (dlib still matches it after an upload-like recompression) is protected
    once more with ``retry.weak_preset``; the second report says which preset made the copy.
    """
    from ..engine.settings import PRESETS, settings_for

    sub = config["output.subfolder"]
    weak_preset = config["retry.weak_preset"]

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
        entry = protector.protect_file(src, **options)
        if entry.status == "ok" and entry.weak and weak_preset and weak_preset != protector.settings.preset:
            log.warning("%s: weak after an upload-like recompression; protecting again with the %s preset",
                        src, weak_preset)
            current = protector.settings
            preset_keys = set(PRESETS[current.preset])
            # Keep what the user chose; take the stronger preset's own flow limit, penalty and steps
            # unless the user had set them away from the current preset's.
            values = {k: v for k, v in current.to_dict().items()
                      if k != "preset" and not (k in preset_keys and v == PRESETS[current.preset][k])}
            values["targets"] = tuple(values["targets"])
            stronger = protector.protect_file(src, settings=settings_for(weak_preset, **values), **options)
            if stronger.status == "ok":
                stronger.notes.append(f"retried with the {weak_preset} preset: the {protector.settings.preset} copy was weak")
                return stronger
        return entry

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
        daemon = Daemon(config, make_processor(protector, config), models=models, tray=not args.no_tray, where=where)
        return ExitStatus(daemon.run())
    finally:
        close_logging()
        lock.release()
