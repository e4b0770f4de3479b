"""Where the time goes: seconds per step and per photo by megapixels and target set, against the
models' own forward+backward time on the same inputs, and peak memory.

Each configuration runs in a fresh subprocess so its peak resident memory is its own.

    python -m benchmarks.speed [--sizes 1,3,12,24] [--steps 12] [--sets face,face+mobileface,face+siglip]
                               [--balance sum|gradnorm|shortfall] [--detail-gain F]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from benchmarks.common import FACES, git_rev, jpeg_encoding_of, machine, md_table, write_results
from ghostmesh_daemon.engine.settings import BALANCES


def _photo(megapixels: float):
    """A real face photo (obama.jpg) scaled to ``megapixels``: real faces at every size."""
    import numpy as np
    from PIL import Image

    im = Image.open(FACES / "obama" / "obama.jpg").convert("RGB")
    s = (megapixels * 1e6 / (im.width * im.height)) ** 0.5
    return np.asarray(im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BICUBIC)).copy()


def _time(fn, repeat: int = 5) -> float:
    """Median wall time of ``fn`` after one warm-up call, waiting for the GPU's queue when there is one."""
    import torch

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    fn()
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _models_time(ev, targets, lpips) -> dict[str, float]:
    """Forward+backward of each model alone, on inputs shaped like one step's."""
    from ghostmesh_daemon.engine.optimize import _crop

    out = {}
    scene = ev.clean_scene
    for t in targets:
        leaf = [v.image.detach().clone().requires_grad_() for v in scene.faces]
        whole = scene.whole.detach().clone().requires_grad_()
        from ghostmesh_daemon.engine.scene import FaceView, Scene

        s = Scene(whole=whole, faces=[FaceView(v.face, v.geometry, l) for v, l in zip(scene.faces, leaf)])
        out[t.name] = _time(lambda: t.embed(s).sum().backward())
    # LPIPS against a fixed reference: the candidate's forward+backward is the model's own work. The
    # whole photo is only steered by LPIPS with an image-level target (face targets change nothing
    # outside the faces; its native measure is taken once, on the result).
    if any(t.info.kind == "image" for t in targets):
        a = scene.whole.detach().clone().requires_grad_()
        out["lpips (whole)"] = _time(lambda: ev.whole_lpips(a).backward())
    crops = [_crop(v.image, box).detach().clone().requires_grad_() for v, box in zip(scene.faces, ev.crop_boxes)]
    if crops:
        out["lpips (faces)"] = _time(lambda: sum(ref(c) for ref, c in zip(ev.face_lpips, crops)).backward())
        # each step also judges every face through one random view (E-LPIPS): a quality measure, so
        # it counts among the models
        from ghostmesh_daemon.engine.losses import ViewDraw

        view = ViewDraw(shift=(3, 3), flip=True, scale=0.75)  # the draws' mean scale
        if ev.settings.lpips_views:
            once = _time(lambda: sum(ref(c, view) for ref, c in zip(ev.face_lpips, crops)).backward())
            out["lpips (faces, random views)"] = once * ev.settings.lpips_views
    return out


def run_one(megapixels: float, target_set: str, steps: int, jpeg: bool = True, balance: str = "sum",
            detail_gain: float = 0.0) -> dict:
    """One configuration, in this process: protect the scaled photo for exactly ``steps`` steps."""
    import torch

    from ghostmesh_daemon.faces import detect_faces
    from ghostmesh_daemon.weights import load_lpips

    targets = build_targets(target_set, "cpu", goal=99.0)  # far goals: no early stop
    lpips, _ = load_lpips()
    rgb = _photo(megapixels)
    t0 = time.perf_counter()
    faces = detect_faces(rgb)
    detect_s = time.perf_counter() - t0
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    row = measure_steps(x, faces, targets, lpips, steps, codec=jpeg_encoding_of(FACES / "obama" / "obama.jpg")[2] if jpeg else None,
                        balance=balance, detail_gain=detail_gain)
    return {**row, "targets": target_set, "detect_seconds": round(detect_s, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)}


def build_targets(target_set: str, device, goal: float | None = None) -> list:
    """Targets by name joined with '+'; ``siglip`` is the full SigLIP-base config with random weights
    (the real model's cost without a download)."""
    import torch

    from ghostmesh_daemon.targets import create_target

    torch.manual_seed(0)
    targets = []
    for name in target_set.split("+"):
        if name == "siglip":
            from transformers import SiglipVisionConfig, SiglipVisionModel

            cfg = SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                     image_size=384, patch_size=16)
            targets.append(create_target("siglip", model=SiglipVisionModel(cfg), device=device, goal=goal))
        else:
            targets.append(create_target(name, device=device, goal=goal))
    return targets


def measure_steps(x, faces, targets, lpips, steps: int, codec=None, balance: str = "sum", detail_gain: float = 0.0) -> dict:
    """Protect ``x`` for ``steps`` stealth steps (``codec``: the JPEG it is judged as; ``balance``: how
    the targets' pushes combine; ``detail_gain`` > 0: the detail basis) and time each model's own forward+backward on the same inputs (on
    whatever device ``x`` and the models are on)."""
    from ghostmesh_daemon.engine import settings_for
    from ghostmesh_daemon.engine.optimize import Evaluator, plan_views, protect_image
    from ghostmesh_daemon.engine.synthesis import clean_view

    settings = settings_for("stealth", steps=steps, face_goal=99.0, image_goal=99.0, balance=balance,  # never stops early
                            detail_gain=detail_gain)
    t0 = time.perf_counter()
    out = protect_image(x, faces, targets, lpips, settings, codec=codec)
    total = time.perf_counter() - t0
    need_detail = any(t.info.kind == "image" for t in targets)
    whole, fg = plan_views(tuple(x.shape[-2:]), faces, settings, need_detail)
    ev = Evaluator([clean_view(x, g) for g in [whole, *fg]], [whole, *fg], faces, targets, lpips, settings)
    models = _models_time(ev, targets, lpips)
    H, W = x.shape[-2:]
    return {
        "megapixels": round(H * W / 1e6, 2), "size": [W, H], "faces": len(faces), "steps": out.steps,
        "step_seconds": round(out.step_seconds_mean, 4), "step_seconds_median": round(out.step_seconds, 4),
        "models_seconds": {k: round(v, 4) for k, v in models.items()},
        "models_total": round(sum(models.values()), 4), "overhead_ratio": round(out.step_seconds_mean / sum(models.values()), 3),
        "jpeg_judged": codec is not None,
        "optimize_seconds": round(total, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1,3,12,24")
    p.add_argument("--sets", default="face,face+mobileface,face+siglip")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--one", nargs=2, metavar=("MP", "SET"), help=argparse.SUPPRESS)
    p.add_argument("--name", default="speed")
    p.add_argument("--no-jpeg", action="store_true", help="time steps without judging the JPEG the photo is written as")
    p.add_argument("--balance", default="sum", choices=BALANCES,
                   help="how the targets' pushes combine (panic shares them by shortfall)")
    p.add_argument("--detail-gain", type=float, default=0.0, help="> 0: time the detail basis (engine.detail_gain)")
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(float(args.one[0]), args.one[1], args.steps, jpeg=not args.no_jpeg, balance=args.balance,
                                        detail_gain=args.detail_gain)))
        return
    rows = []
    configs = [(float(mp), "face") for mp in args.sizes.split(",")]
    configs += [(1.0, s) for s in args.sets.split(",") if s != "face"]
    for mp, target_set in configs:
        cmd = [sys.executable, "-m", "benchmarks.speed", "--one", str(mp), target_set, "--steps", str(args.steps),
               *(["--no-jpeg"] if args.no_jpeg else []), "--balance", args.balance,
               "--detail-gain", str(args.detail_gain)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr[-2000:], file=sys.stderr)
            rows.append({"megapixels": mp, "targets": target_set, "error": res.stderr.strip().splitlines()[-1]})
            continue
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    data = {"machine": machine(), "revision": git_rev(), "steps": args.steps, "balance": args.balance,
            "detail_gain": args.detail_gain, "runs": rows}
    md = [f"# Speed ({args.name})", "", f"Machine: {data['machine']}. Revision {data['revision']}. "
          f"{args.steps} optimizer steps per run (early stop disabled); a real face photo scaled to each size"
          f"{'' if args.no_jpeg else ', judged as the JPEG it is written as (its own tables)'}; targets' pushes "
          f"combined by {args.balance}"
          f"{f'; the noise as a re-weighting of the photo detail (detail_gain {args.detail_gain:g})' if args.detail_gain else ''}.", "",
          "Per step: mean optimizer step; models: each model's own forward+backward on that step's inputs, summed; "
          "ratio = step / models. Peak RSS: the whole process (libraries and models included).", "",
          md_table(["MP", "targets", "faces", "s/step", "models s", "ratio", "optimize s", "peak RSS GB"],
                   [[r.get("megapixels"), r.get("targets"), r.get("faces"), r.get("step_seconds"), r.get("models_total"),
                     r.get("overhead_ratio"), r.get("optimize_seconds"), r.get("peak_rss_gb")] for r in rows])]
    write_results(args.name, data, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
