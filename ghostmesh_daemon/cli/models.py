"""``ghostmesh models``: which models are available, where their weights come from, how to get the rest."""

from __future__ import annotations

import argparse

from ..engine.settings import EngineSettings
from ..errors import ModelUnavailable
from .env import Env, ExitStatus


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list models, where their weights come from, how to get missing ones")
    p.add_argument("--siglip-model", default=EngineSettings().siglip_model, metavar="ID_OR_DIR",
                   help="SigLIP model id or local folder to check")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Env) -> ExitStatus:
    from ..targets import create_target, list_targets
    from ..weights import lpips_alexnet_source

    out = env.stdout
    missing = 0
    names = list_targets()
    in_auto = set(list_targets(auto=True))
    w = max(11, *(len(n) for n in names))
    for name in names:
        note = "" if name in in_auto else "; a held-out judge: used only when named, never by auto"
        try:
            target = create_target(name, siglip_model=args.siglip_model)
            out.write(f"{name:<{w}} available  ({target.info.weights}{note})\n")
        except ModelUnavailable as e:
            if name in in_auto:
                missing += 1
            out.write(f"{name:<{w}} MISSING    {e.reason}\n{'':<{w + 12}}how to get it: {e.how_to_get}\n")
    lp = lpips_alexnet_source()
    out.write(f"{'lpips':<{w}} {'available ' if lp.path else 'download  '} ({lp.origin})\n")
    if missing:
        out.write(f"\n{missing} target(s) missing: `--targets auto` protects with the others and says so in every report.\n")
    return ExitStatus.OK
