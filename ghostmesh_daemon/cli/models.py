"""``ghostmesh models``: which models are available, where their weights come from, how to get the rest.

For SigLIP it also says what was decided and why (:mod:`ghostmesh_daemon.hub`): found in a local
folder or the Hugging Face cache, or not usable because offline mode is set or the hub was found
unreachable (remembered for a day; ``--probe`` asks the hub again now).
"""

from __future__ import annotations

import argparse

from ..engine.settings import EngineSettings
from ..errors import ModelUnavailable
from .env import Env, ExitStatus


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list models, where their weights come from, how to get missing ones")
    p.add_argument("--siglip-model", default=EngineSettings().siglip_model, metavar="ID_OR_DIR",
                   help="SigLIP model id or local folder to check")
    p.add_argument("--probe", action="store_true",
                   help="forget a remembered unreachable hub and ask it now (downloads SigLIP when it answers)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Env) -> ExitStatus:
    from .. import hub
    from ..targets import create_target, list_targets
    from ..weights import lpips_alexnet_source

    out = env.stdout
    missing = 0
    names = list_targets()
    in_auto = set(list_targets(auto=True))
    w = max(11, *(len(n) for n in names))
    decision = None
    for name in names:
        note = "" if name in in_auto else "; a held-out judge: used only when named, never by auto"
        try:
            if name == "siglip":
                decision = hub.decide(args.siglip_model, force_probe=args.probe)
                if not decision.usable:
                    raise ModelUnavailable(f"siglip ({args.siglip_model})", decision.reason,
                                           "Download it once with network access: `ghostmesh models --probe`, or "
                                           "point engine.siglip_model at a local folder holding config.json and "
                                           "model.safetensors.")
                if decision.download:
                    env.stderr.write(f"downloading SigLIP ({args.siglip_model}) once from the Hugging Face hub …\n")
            target = create_target(name, siglip_model=args.siglip_model)
            out.write(f"{name:<{w}} available  ({target.info.weights}{note})\n")
        except ModelUnavailable as e:
            if name == "siglip" and decision is not None and decision.download:
                hub.download_failed(e.reason)
            if name in in_auto:
                missing += 1
            out.write(f"{name:<{w}} MISSING    {e.reason}\n{'':<{w + 12}}how to get it: {e.how_to_get}\n")
    if decision is not None:
        label = {"local folder": "a local folder", "cache": "the local cache", "download": "downloaded now",
                 "offline": "offline mode", "remembered": "a remembered unreachable hub",
                 "unreachable": "the hub unreachable now"}.get(decision.source, decision.source)
        out.write(f"{'siglip':<{w}} decided by {label} "
                  f"({'the hub was asked once, now' if decision.probed else 'no network request'})\n")
    lp = lpips_alexnet_source()
    out.write(f"{'lpips':<{w}} {'available ' if lp.path else 'download  '} ({lp.origin})\n")
    if missing:
        out.write(f"\n{missing} target(s) missing: `--targets auto` protects with the others and says so in every report.\n")
    return ExitStatus.OK
