"""``ghostmesh verify ORIGINAL PROTECTED``: how protected is this copy? The report's numbers, as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .engine_options import add_engine_options, engine_settings_from_args
from .env import Env, ExitStatus


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("verify", help="measure how protected a copy is (JSON on stdout)",
                              description="Compare a protected copy with its original and print the same "
                              "numbers a protect report holds, with the same verdict: status 'weak' and the "
                              "reasons when a target's goal is not reached or a perceptual budget is exceeded "
                              "(judged with the engine options given here). Exit status 0: ok; 1: weak or "
                              "the files cannot be compared; 2: bad usage.")
    p.add_argument("original", type=Path)
    p.add_argument("protected", type=Path)
    add_engine_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Env) -> ExitStatus:
    from ..pipeline import Protector

    protector = Protector(engine_settings_from_args(args), warn=lambda m: env.stderr.write(f"WARNING: {m}\n"))
    entry = protector.verify(args.original, args.protected)
    env.stdout.write(json.dumps(entry.to_dict(), indent=2) + "\n")
    if entry.status == "failed":
        env.stderr.write(f"{entry.input}: {entry.reason}\n")
        return ExitStatus.ERROR
    if entry.status in ("weak", "skipped"):
        env.stderr.write(f"{entry.output}: {entry.status}: {entry.reason}\n")
    return ExitStatus.ERROR if entry.status == "weak" else ExitStatus.OK
