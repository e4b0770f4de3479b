"""``ghostmesh backfill PATH...``: protect a whole library on Ray workers, resumably.

The same protection as ``protect`` (the same engine options, presets, weak-photo handling and report
entries), spread over Ray workers (a local Ray instance when there is no cluster), with a
content-keyed ledger so a second run, or a run after a ``kill -9``, does only what is left.
Exit status as ``protect``: 0 when every photo was protected or skipped, 1 when any failed or was
weak (this run or an earlier one: the report covers the whole library), 2 on bad usage (including
Ray not installed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from .engine_options import _whole_number, add_engine_options, engine_settings_from_args
from .env import Env, ExitStatus


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {value:g}")
    return value


def default_ledger() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_dir("ghostmesh", appauthor=False)) / "backfill.sqlite3"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "backfill",
        help="protect a whole library on Ray workers (resumable)",
        description="Protect every photo under PATH (folders are walked recursively) on Ray workers, each "
        "holding one loaded engine, writing <name>.ghost<ext> beside each photo as `protect` does. A ledger "
        "keyed by content remembers what is finished: run it again (after a crash, a kill, or new photos) "
        "and only what is left is done. Needs `pip install 'ghostmesh[cluster]'`.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="photos or folders")
    p.add_argument("--cluster", default="auto", metavar="auto|local|ADDRESS",
                   help="auto (default): join $RAY_ADDRESS if set, else start a local Ray instance on this "
                   "machine; local: always start one; ADDRESS: an existing cluster (host:6379, ray://host:10001)")
    p.add_argument("--workers", type=_whole_number(1), metavar="N",
                   help="engines to run at once (default: one per GPU, else one per --cpus-per-worker CPUs)")
    p.add_argument("--cpus-per-worker", type=_positive_float, default=1.0, metavar="N",
                   help="CPUs each worker reserves (its torch threads); default 1")
    p.add_argument("--gpus-per-worker", type=_positive_float, metavar="F",
                   help="GPUs each worker reserves (default: 1 when the cluster has GPUs, else none; 0.5 puts two on one GPU)")
    p.add_argument("--transfer", choices=("auto", "shared", "bytes"), default="auto",
                   help="shared: workers read the photos and write the copies beside them (a shared filesystem); "
                   "bytes: the driver sends each photo and writes the copy it gets back; auto (default): shared for "
                   "each worker that sees the same file at the same path, bytes for the others")
    p.add_argument("--ledger", type=Path, metavar="FILE",
                   help=f"the run's memory of what is finished (default: {default_ledger()})")
    p.add_argument("--max-attempts", type=_whole_number(1), default=3, metavar="N",
                   help="attempts per photo over all runs before a failed one is left failed (default 3)")
    p.add_argument("--worker-restarts", type=_whole_number(0), default=2, metavar="N",
                   help="times Ray restarts a worker that died and retries its photo (default 2)")
    p.add_argument("--out-dir", type=Path, metavar="DIR", help="write the protected copies into DIR")
    p.add_argument("--report", type=Path, metavar="FILE.json",
                   help="write a JSON report, one entry per photo (as `protect --report`; earlier runs' included)")
    p.add_argument("--strip-gps", action="store_true", help="remove GPS position from the copies")
    p.add_argument("--keep-weak", action="store_true",
                   help="write a weak copy under the protected name anyway; it is still reported weak")
    p.add_argument("--quiet", action="store_true", help="print only errors and the summary")
    add_engine_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Env) -> ExitStatus:
    from ..batch.driver import BackfillOptions, import_ray, run_backfill, starts_local
    from ..batch.ledger import LedgerBusy
    from .protect import summary_line

    import_ray(local=starts_local(args.cluster))  # a usage error (exit 2) naming the extra, before anything else
    if args.out_dir is not None and not args.out_dir.is_dir():
        raise UsageError(f"ghostmesh backfill: --out-dir {args.out_dir}: not an existing folder")
    settings = engine_settings_from_args(args)
    opts = BackfillOptions(
        paths=list(args.paths), settings=settings, ledger=args.ledger or default_ledger(), cluster=args.cluster,
        workers=args.workers, cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
        transfer=args.transfer, out_dir=args.out_dir, keep_weak=args.keep_weak, strip_gps=args.strip_gps,
        max_attempts=args.max_attempts, worker_restarts=args.worker_restarts, report=args.report,
        argv=[f"{k}={v}" for k, v in sorted(vars(args).items()) if k != "handler"],
    )
    bar = None
    seen_warnings: set[str] = set()

    def progress(total: int | None):
        nonlocal bar
        from tqdm import tqdm

        bar = tqdm(total=total, unit="photo", desc="backfill", file=env.stderr, dynamic_ncols=True)
        return bar

    def say(stream, line: str) -> None:
        if bar is not None:
            bar.write(line, file=stream)
        else:
            other = env.stdout if stream is env.stderr else env.stderr
            other.flush()
            stream.write(line + "\n")
            stream.flush()

    def on_entry(entry: dict, earlier: bool) -> None:
        for w in entry.get("warnings", []):
            if w not in seen_warnings:
                seen_warnings.add(w)
                say(env.stderr, f"WARNING: {w}")
        if earlier:
            return  # finished before: counted in the summary, listed in the report
        line = summary_line(_entry(entry))
        if entry["status"] in ("failed", "weak"):
            say(env.stderr, line)
        elif not args.quiet:
            say(env.stdout, line)

    try:
        summary = run_backfill(opts, on_entry=on_entry, progress=progress if env.is_terminal else None)
    except LedgerBusy as e:
        raise UsageError(f"ghostmesh backfill: {e}") from None
    c = summary.counts
    rate = summary.processed / summary.seconds * 60 if summary.seconds > 0 else 0.0
    env.stdout.write(
        f"backfill: {summary.total} photos: {c['ok']} done, {c['weak']} weak, {c['failed']} failed, "
        f"{c['skipped']} skipped ({summary.earlier} of them finished in earlier runs); "
        f"{summary.processed} processed in {summary.seconds:.1f} s on {summary.workers} worker(s)"
        f" ({rate:.1f} photos/min)" + (f"; report {summary.report}" if summary.report else "") + "\n")
    env.stdout.flush()
    return ExitStatus.ERROR if c["failed"] or c["weak"] else ExitStatus.OK


def _entry(d: dict):
    """A ReportEntry good enough for :func:`summary_line` (its fields, target results as objects)."""
    from ..report import ReportEntry, TargetResult

    fields = dict(d)
    fields["target_results"] = {k: TargetResult(**v) for k, v in (d.get("target_results") or {}).items()}
    return ReportEntry(**{k: v for k, v in fields.items() if k in ReportEntry.__dataclass_fields__})
