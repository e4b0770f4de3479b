"""``ghostmesh protect PATH...``: protect photos now, from the command line or an editor's export hook.

Writes ``<stem>.ghost<ext>`` beside each original (or in ``--out-dir``), never touches an original,
skips files that are already outputs, shows progress on a terminal, and exits 0 when every photo was
protected (or skipped: nothing to protect), 1 when some photo failed or came back weak, 2 on bad
usage. A weak copy (a target not reached or a budget exceeded, measured on the written file) is not
written under the protected name unless ``--keep-weak``. ``--in-place`` is for export hooks only: it
replaces an exported file with its protected version, atomically, and leaves it as it was when the
copy is weak.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator

from ..errors import UsageError
from ..report import ReportEntry, write_report
from .engine_options import add_engine_options, engine_settings_from_args
from .env import Env, ExitStatus


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "protect",
        help="protect photos now and write protected copies",
        description="Write a protected copy <name>.ghost<ext> beside each photo (folders are searched "
        "recursively). Originals are never modified. Each copy is measured as written: one that does not "
        "reach every target's goal within the preset's perceptual budgets is 'weak' and is not written "
        "(unless --keep-weak). Exit status: 0 when every photo was protected or skipped (e.g. no face "
        "for face-only targets), 1 when any photo failed or was weak, 2 on bad usage.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="photos or folders")
    p.add_argument("--out-dir", type=Path, metavar="DIR", help="write the protected copies into DIR")
    p.add_argument("--report", type=Path, metavar="FILE.json", help="write a JSON report, one entry per photo")
    p.add_argument("--strip-gps", action="store_true", help="remove GPS position from the copies")
    p.add_argument("--in-place", action="store_true",
                   help="replace FILE itself with its protected version (for editor export hooks)")
    p.add_argument("--force", action="store_true", help="with --in-place: allow files inside watched folders")
    p.add_argument("--keep-weak", action="store_true",
                   help="write a weak copy under the protected name anyway (with --in-place: replace the file); "
                   "it is still reported weak and the exit status is still 1")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    p.add_argument("--no-daemon", action="store_true",
                   help="protect here even when the daemon runs (by default a running daemon, its models "
                   "already loaded, does the work; also GHOSTMESH_NO_DAEMON=1)")
    add_engine_options(p)
    p.set_defaults(handler=run)


def _expand(paths: list[Path]) -> Iterator[Path]:
    """Files as given; folders walked recursively for supported photos (our outputs skipped later)."""
    from ..imaging import SUPPORTED_SUFFIXES

    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
        else:
            yield path


def _watched_folders() -> list[Path]:
    """The daemon's watched folders from the user's config (empty if there is no config yet)."""
    from ..config import default_config_path, load_config

    if not default_config_path().exists():
        return []
    return [f.path for f in load_config(create=False).folders]


def _check_in_place(files: list[Path], force: bool) -> None:
    if force:
        return
    for folder in _watched_folders():
        for f in files:
            if f.resolve().is_relative_to(folder.resolve()):
                raise UsageError(
                    f"ghostmesh protect: {f}: --in-place refused inside the watched folder {folder} "
                    "(the daemon keeps originals there); use --force to do it anyway"
                )


def summary_line(entry: ReportEntry, in_place: bool = False) -> str:
    """One line per photo for the terminal."""
    if entry.status == "weak":
        if entry.output:
            return f"{entry.input} -> {entry.output}: weak (kept at your request): {entry.reason}"
        hint = ("left unchanged; --keep-weak replaces it anyway" if in_place
                else "not written; --keep-weak writes it anyway")
        return f"{entry.input}: weak: {entry.reason} ({hint})"
    if entry.status != "ok":
        return f"{entry.input}: {entry.status}: {entry.reason}"
    parts = []
    for name, r in entry.target_results.items():
        if r.distance_after:
            parts.append(f"{name} {min(r.distance_after):.2f}/{r.goal:g}")
        else:
            parts.append(f"{name} n/a")
    faces = f"{entry.faces} face{'s' if entry.faces != 1 else ''}"
    return (f"{entry.input} -> {entry.output}: ok ({faces}; distance {', '.join(parts)}; "
            f"LPIPS {entry.lpips:.3f}; {entry.steps} steps, {entry.seconds:.1f} s)")


def run(args: argparse.Namespace, env: Env) -> ExitStatus:
    files = list(_expand(args.paths))
    missing = [f for f in files if not f.exists()]
    if args.in_place:
        if args.out_dir:
            raise UsageError("ghostmesh protect: --in-place and --out-dir cannot be used together")
        if missing:
            raise UsageError(f"ghostmesh protect: {missing[0]}: no such file")
        _check_in_place(files, args.force)
    if args.out_dir is not None and not args.out_dir.is_dir():
        raise UsageError(f"ghostmesh protect: --out-dir {args.out_dir}: not an existing folder")
    settings = engine_settings_from_args(args)
    entries: list[ReportEntry] = []
    model_warnings: list[str] = []

    def emit(entry: ReportEntry) -> None:
        entries.append(entry)
        # Warnings first: the photo's own line is the last one (editor plugins show the last line).
        for w in entry.warnings:
            if w not in model_warnings:
                _write(env, env.stderr, f"{entry.input}: {w}")
        line = summary_line(entry, args.in_place)
        if entry.status in ("failed", "weak"):
            _write(env, env.stderr, line)
        elif not args.quiet:
            _write(env, env.stdout, line)

    todo = files
    if not (args.no_daemon or env.environ.get("GHOSTMESH_NO_DAEMON", "") not in ("", "0")):
        from .handoff import protect_via_daemon

        pos = 0

        def handed(entry: ReportEntry) -> None:  # the daemon's entries come in the files' order
            nonlocal pos
            while not files[pos].exists():
                emit(ReportEntry.failed(files[pos], "no such file"))
                pos += 1
            emit(entry)
            pos += 1

        protect_via_daemon([f for f in files if f.exists()], args, settings, env, handed, model_warnings)
        # What the daemon left (it could not take the run, or it stopped) is done here, in order.
        todo = files[pos:]
    if todo:
        from ..pipeline import Protector

        protector = Protector(settings, warn=lambda m: env.stderr.write(f"WARNING: {m}\n"))
        model_warnings[:] = protector.warnings
        for f in todo:
            emit(ReportEntry.failed(f, "no such file") if not f.exists() else _protect_one(protector, f, args, env))
    if args.report:
        write_report(entries, args.report)
    return ExitStatus.ERROR if any(e.status in ("failed", "weak") for e in entries) else ExitStatus.OK


def _write(env: Env, stream, line: str) -> None:
    """One line, flushed, so stdout and stderr keep their order when both go to one file."""
    other = env.stdout if stream is env.stderr else env.stderr
    other.flush()
    stream.write(line + "\n")
    stream.flush()


def _protect_one(protector, f: Path, args: argparse.Namespace, env: Env) -> ReportEntry:
    kwargs = dict(out_dir=args.out_dir, in_place=args.in_place, strip_gps=args.strip_gps, keep_weak=args.keep_weak)
    if not env.is_terminal or args.quiet:
        return protector.protect_file(f, **kwargs)
    from tqdm import tqdm

    with tqdm(total=protector.settings.steps, desc=f.name, unit="step", file=env.stderr, leave=False) as bar:
        def progress(step: int, total: int) -> None:
            bar.update(step - bar.n)

        return protector.protect_file(f, progress=progress, **kwargs)
