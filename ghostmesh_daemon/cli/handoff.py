"""The caller's side of the hand-off: when the daemon runs, ``ghostmesh protect`` gives it the photos
(``ghostmesh_daemon/daemon/handoff.py`` has the protocol) instead of loading the models itself.

Nothing here imports torch: a handed-off run costs the Python start, this module and one socket
round trip, not the engine's start. Whenever the daemon cannot take the run (none running, an older
or newer version, other targets or another device, stopping), :func:`protect_via_daemon` says why
(unless no daemon runs at all) and hands the photos back for a local run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path
from typing import Callable

from .. import ENGINE_VERSION, __version__
from ..report import ReportEntry
from .env import Env

#: Silence longer than this (the daemon sends a heartbeat every 5 s) means it is stuck.
SILENCE_LIMIT = 60.0
#: Files per request, so a request line stays far below the socket's 1 MiB limit.
BATCH = 500


class _Gone(Exception):
    """The daemon went away (or stopped) in the middle of a request."""


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def protect_via_daemon(files: list[Path], args: argparse.Namespace, settings, env: Env,
                       emit: Callable[[ReportEntry], None], model_warnings: list[str]) -> list[Path]:
    """Have the running daemon protect ``files`` (all existing), calling ``emit`` with each entry in
    the files' order; the daemon's model warnings are printed once and added to ``model_warnings``.
    Returns the files it did not do (all of them when no daemon can take the run), for the caller
    to protect itself."""
    if not hasattr(socket, "AF_UNIX") or not files:
        return files
    from ..daemon import paths

    sock_path = paths.socket_path()
    if not sock_path.exists():
        return files
    done = 0

    def counted(entry: ReportEntry) -> None:
        nonlocal done
        done += 1
        emit(entry)

    try:
        for start in range(0, len(files), BATCH):
            batch = files[start:start + BATCH]
            _one_request(sock_path, batch, args, settings, env, counted, model_warnings if start == 0 else None)
    except _Gone as e:
        rest = files[done:]
        if done == 0 and e.args and e.args[0] == "silent":
            return rest  # nothing answers on the socket (a stale one): a plain local run
        why = "the daemon stopped answering" if e.args and e.args[0] == "silent" else str(e)
        _note(env, f"ghostmesh protect: {why}; protecting " + (
            "here instead" if done == 0 else f"the remaining {len(rest)} photo(s) here"))
        return rest
    return []


def _note(env: Env, line: str) -> None:
    env.stdout.flush()
    env.stderr.write(line + "\n")
    env.stderr.flush()


def _request(batch: list[Path], args: argparse.Namespace, settings) -> dict:
    out_dir = args.out_dir
    if out_dir is not None and out_dir.is_absolute():
        out_dir = Path(os.path.abspath(out_dir))
    return {
        "cmd": "protect",
        "version": __version__,
        "engine_version": ENGINE_VERSION,
        "settings": settings.to_dict(),
        "files": [os.path.abspath(f) for f in batch],
        # a relative --out-dir is taken relative to each photo's folder, as a local run does (output_path)
        "out_dir": None if out_dir is None else str(out_dir),
        "in_place": bool(args.in_place),
        "strip_gps": bool(args.strip_gps),
        "keep_weak": bool(args.keep_weak),
        "umask": _umask(),
    }


def _one_request(sock_path: Path, batch: list[Path], args, settings, env: Env,
                 emit: Callable[[ReportEntry], None], first: list[str] | None) -> int:
    """One request for ``batch``; returns how many of its photos were emitted. Raises :class:`_Gone`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        try:
            sock.connect(str(sock_path))
        except OSError:
            raise _Gone("silent") from None
        sock.settimeout(SILENCE_LIMIT)
        reader = sock.makefile("rb")
        try:
            sock.sendall(json.dumps(_request(batch, args, settings)).encode() + b"\n")
            return _read_answers(reader, batch, args, settings, env, emit, first)
        finally:
            reader.close()
    finally:
        sock.close()


def _events(reader):
    while True:
        try:
            line = reader.readline()
        except (OSError, socket.timeout):
            raise _Gone(f"the daemon did not answer for {SILENCE_LIMIT:.0f} s") from None
        if not line:
            raise _Gone("the daemon closed the connection")
        try:
            event = json.loads(line)
        except ValueError:
            raise _Gone("the daemon sent something unreadable") from None
        yield event


def _read_answers(reader, batch: list[Path], args, settings, env: Env, emit, first: list[str] | None) -> int:
    events = _events(reader)
    try:
        event = next(events)
    except _Gone:
        raise _Gone("silent") from None
    if event.get("event") != "accepted":
        if event.get("event") == "refused" or not event.get("ok", True):
            why = event.get("error") or "it refused"
            # An older daemon answers {"ok": false, "error": "bad request: unknown command 'protect'"}
            raise _Gone(f"the running daemon cannot take this run ({why})")
        raise _Gone(f"the daemon answered {event.get('event')!r}")
    if first is not None:
        for w in event.get("warnings") or []:
            first.append(w)
            _note(env, f"WARNING: {w}")
        if env.is_terminal and not args.quiet:
            paused = event.get("paused") or []
            _note(env, f"handing {len(batch)} photo(s) to the running daemon (pid {event.get('pid')}, "
                       f"{', '.join(event.get('targets') or [])} on {event.get('device')})"
                       + (f"; it is paused ({', '.join(paused)}) but runs these: you asked for them" if paused else ""))
    entries: dict[int, ReportEntry] = {}
    emitted = 0
    bar = None
    try:
        while emitted < len(batch):
            event = next(events)
            kind = event.get("event")
            if kind == "progress":
                if env.is_terminal and not args.quiet:
                    if bar is None:
                        from tqdm import tqdm

                        bar = tqdm(total=settings.steps, desc=batch[event["index"]].name, unit="step",
                                   file=env.stderr, leave=False)
                    bar.update(int(event["step"]) - bar.n)
            elif kind == "entry":
                i = int(event["index"])
                entries[i] = _as_asked(ReportEntry.from_dict(event["entry"]), batch[i], args)
                if bar is not None:
                    bar.close()
                    bar = None
                while emitted in entries:
                    emit(entries.pop(emitted))
                    emitted += 1
            elif kind == "stopped":
                raise _Gone(f"the daemon is stopping ({event.get('error')})")
            elif kind == "end":
                break
    except _Gone as e:
        raise _Gone(*e.args) from None
    finally:
        if bar is not None:
            bar.close()
    if emitted < len(batch):
        raise _Gone("the daemon ended the request early")
    return emitted


def _as_asked(entry: ReportEntry, f: Path, args) -> ReportEntry:
    """The entry with the paths spelt as the user gave them (the daemon saw absolute ones), so it
    reads as a local run's entry would."""
    src_abs = Path(os.path.abspath(f))
    if args.out_dir is None:
        dest_user, dest_abs = f.parent, src_abs.parent
    elif args.out_dir.is_absolute():
        dest_user, dest_abs = args.out_dir, Path(os.path.abspath(args.out_dir))
    else:
        dest_user, dest_abs = f.parent / args.out_dir, src_abs.parent / args.out_dir

    def user_path(value: str | None) -> str | None:
        if value is None:
            return None
        p = Path(value)
        if p == src_abs:
            return str(f)
        if p == dest_abs:
            return str(dest_user)
        if p.parent == dest_abs:
            return str(dest_user / p.name)
        return value

    entry.input = user_path(entry.input) or entry.input
    entry.output = user_path(entry.output)
    return entry
