"""Does protection hold? Every photo in ../shared/data/faces protected, then judged by dlib's own pipeline.

For each protected photo A' and every other photo B of the same person: dlib distance between the
faces found in A' and B's face (HOG + 5-point + 0.6 threshold), on the file as written (JPEG at
the original's quality) and after an upload-like JPEG 75 + resize to 1080 px. A pair counts as
protected when no face in A' is within 0.6 of B (or HOG finds no face in A').

    python -m benchmarks.protection [--targets face] [--preset stealth] [--steps N] [--name NAME]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import face_photos, git_rev, machine, md_table, references, write_results
from ghostmesh_daemon.cli.engine_options import add_engine_options, engine_settings_from_args
from ghostmesh_daemon.dlib_check import MATCH_THRESHOLD, best_match, find_faces, upload_like
from ghostmesh_daemon.imaging import read_photo
from ghostmesh_daemon.pipeline import Protector


class MobileFaceJudge:
    """The held-out embedder check: MobileFace's cosine distance, "same person" below its threshold.

    Faces are found with dlib's detector on each photo (as an attacker would), then embedded.
    """

    def __init__(self) -> None:
        from ghostmesh_daemon.targets import create_target

        self.target = create_target("mobileface")
        self.threshold = self.target.info.match_threshold

    def faces(self, rgb: np.ndarray) -> list[np.ndarray]:
        import torch

        from ghostmesh_daemon.engine.scene import FaceView, Scene, ViewGeometry
        from ghostmesh_daemon.faces import detect_faces

        found = detect_faces(rgb)
        if not found:
            return []
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
        h, w = rgb.shape[:2]
        whole = ViewGeometry(box=(0, 0, w, h), size=(h, w))
        with torch.no_grad():
            emb = self.target.embed(Scene(whole=x, faces=[FaceView(f, whole, x) for f in found]))
        return [e.numpy() for e in emb]

    def distance(self, candidates: list[np.ndarray], reference: np.ndarray) -> float | None:
        if not candidates:
            return None
        cos = [float(c @ reference / (np.linalg.norm(c) * np.linalg.norm(reference))) for c in candidates]
        return 1 - max(cos)


def _uint8(path: Path) -> np.ndarray:
    return np.ascontiguousarray((read_photo(path).rgb * 255).round().astype(np.uint8))


def contact_sheet(rows: list[tuple[np.ndarray, np.ndarray, tuple]], dest: Path, crop: int = 256) -> None:
    """Before/after crops at 100 % around each photo's main face, one row per photo."""
    tiles = []
    for before, after, box in rows:
        cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
        h, w = before.shape[:2]
        x0 = int(min(max(0, cx - crop // 2), max(0, w - crop)))
        y0 = int(min(max(0, cy - crop // 2), max(0, h - crop)))
        a, b = before[y0:y0 + crop, x0:x0 + crop], after[y0:y0 + crop, x0:x0 + crop]
        pad = lambda t: np.pad(t, ((0, crop - t.shape[0]), (0, crop - t.shape[1]), (0, 0)), constant_values=255)
        tiles.append(np.concatenate([pad(a), np.full((crop, 8, 3), 255, np.uint8), pad(b)], axis=1))
    sheet = np.concatenate([np.concatenate([t, np.full((8, t.shape[1], 3), 255, np.uint8)]) for t in tiles])
    # JPEG at quality 90 with full chroma: the crops stay faithful at 100 % and the file small.
    Image.fromarray(sheet).save(dest, quality=90, subsampling=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="protection", help="results file name")
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos (quick look)")
    parser.add_argument("--face-lpips-budget", type=float, default=None, help="per-face LPIPS budget (default 0.03)")
    parser.add_argument("--face-lpips-size", type=int, default=None, help="face LPIPS resolution (default: the preset's)")
    parser.add_argument("--eot", type=int, default=None, help="EOT samples per step (default: the settings')")
    parser.add_argument("--no-mobileface-judge", action="store_true", help="skip the held-out MobileFace check")
    add_engine_options(parser)
    args = parser.parse_args()
    if args.targets is None:
        args.targets = ("face",)
    settings = engine_settings_from_args(args)
    from dataclasses import replace

    if args.face_lpips_budget is not None:
        settings = replace(settings, face_lpips_budget=args.face_lpips_budget)
    if args.face_lpips_size is not None:
        settings = replace(settings, face_lpips_size=args.face_lpips_size)
    if args.eot is not None:
        settings = replace(settings, eot_samples=args.eot)
    protector = Protector(settings)
    judge = None if args.no_mobileface_judge else MobileFaceJudge()

    refs = {}
    for person, path in references():
        found = find_faces(_uint8(path))
        if found:  # the largest face is the person's
            mf = judge.faces(_uint8(path)) if judge else []
            refs[path] = (person, max(found, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])).descriptor,
                          mf[0] if mf else None)

    photos = face_photos()[: args.limit]
    per_photo, pairs, sheet_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for person, path in photos:
            t0 = time.perf_counter()
            entry = protector.protect_file(path, out_dir=Path(tmp))
            wall = time.perf_counter() - t0
            if entry.status != "ok":
                per_photo.append({"photo": f"{person}/{path.name}", "status": entry.status, "reason": entry.reason})
                continue
            original, written = _uint8(path), _uint8(Path(entry.output))
            uploaded = upload_like(written, 75, 1080)
            found_saved, found_upload, found_before = find_faces(written), find_faces(uploaded), find_faces(original)
            mf_before = judge.faces(original) if judge else []
            mf_saved, mf_upload = (judge.faces(written), judge.faces(uploaded)) if judge else ([], [])
            for ref_path, (ref_person, desc, mf_ref) in refs.items():
                if ref_person != person or ref_path == path:
                    continue
                before = best_match(found_before, desc)
                saved = best_match(found_saved, desc)
                upload = best_match(found_upload, desc)
                pair = {
                    "protected": f"{person}/{path.name}", "reference": ref_path.name, "before": before,
                    "saved": saved, "upload": upload,
                    "protected_saved": saved is None or saved >= MATCH_THRESHOLD,
                    "protected_upload": upload is None or upload >= MATCH_THRESHOLD,
                }
                if judge and mf_ref is not None:
                    mb, ms, mu = (judge.distance(c, mf_ref) for c in (mf_before, mf_saved, mf_upload))
                    pair.update({"mobileface_before": mb, "mobileface_saved": ms, "mobileface_upload": mu,
                                 "mobileface_matched_before": mb is not None and mb < judge.threshold,
                                 "mobileface_protected_saved": ms is None or ms >= judge.threshold,
                                 "mobileface_protected_upload": mu is None or mu >= judge.threshold})
                pairs.append(pair)
            r = entry.target_results.get("face")
            per_photo.append({
                "photo": f"{person}/{path.name}", "status": "ok", "megapixels": round(original.shape[0] * original.shape[1] / 1e6, 2),
                "faces": entry.faces, "dlib_distance_to_original": entry.face_dlib_distance,
                "port_distance": r.distance_after if r else None, "lpips": entry.lpips, "face_lpips": entry.face_lpips,
                "max_delta": entry.max_delta, "max_flow_px": entry.max_flow_px, "steps": entry.steps,
                "seconds": entry.seconds, "wall_seconds": round(wall, 2),
            })
            if entry.faces:
                box = found_before[0].box if found_before else (0, 0, original.shape[1], original.shape[0])
                sheet_rows.append((original, written, box))
            print(f"{person}/{path.name}: {entry.steps} steps, {entry.seconds:.1f} s, dlib {entry.face_dlib_distance}, "
                  f"face LPIPS {entry.face_lpips}", flush=True)

    ok = [p for p in per_photo if p["status"] == "ok"]
    face_lp = [v for p in ok for v in p["face_lpips"]]
    summary = {
        "pairs": len(pairs),
        "protected_saved": sum(p["protected_saved"] for p in pairs),
        "protected_upload": sum(p["protected_upload"] for p in pairs),
        # held-out MobileFace: only pairs it matched before protection count
        "mobileface_pairs": sum(1 for p in pairs if p.get("mobileface_matched_before")),
        "mobileface_protected_saved": sum(1 for p in pairs if p.get("mobileface_matched_before") and p["mobileface_protected_saved"]),
        "mobileface_protected_upload": sum(1 for p in pairs if p.get("mobileface_matched_before") and p["mobileface_protected_upload"]),
        "median_lpips": statistics.median(p["lpips"] for p in ok) if ok else None,
        "median_face_lpips": statistics.median(face_lp) if face_lp else None,
        "max_face_lpips": max(face_lp) if face_lp else None,
        "median_seconds": statistics.median(p["seconds"] for p in ok) if ok else None,
        "median_steps": statistics.median(p["steps"] for p in ok) if ok else None,
    }
    data = {"name": args.name, "machine": machine(), "revision": git_rev(), "settings": settings.to_dict(), "summary": summary,
            "photos": per_photo, "pairs": pairs}
    rate = lambda k: f"{summary[k]}/{summary['pairs']} ({100 * summary[k] / max(1, summary['pairs']):.0f} %)"
    md = [f"# Protection on ../shared/data/faces ({args.name})", "",
          f"Machine: {data['machine']}. Revision {data['revision']}. Targets: {', '.join(settings.targets)}; "
          f"preset {settings.preset}, mode {settings.mode}, up to {settings.steps} steps; noise limit {settings.noise_limit}, "
          f"flow limit {settings.flow_limit}, LPIPS budgets {settings.lpips_budget} (photo) / {settings.face_lpips_budget} (face, at {settings.face_lpips_size} px), "
          f"EOT samples {settings.eot_samples}.", "",
          f"- Same-person pairs no longer matched by dlib (distance >= 0.6 or no face found): as written {rate('protected_saved')}, "
          f"after JPEG 75 + resize to 1080 px {rate('protected_upload')}",
          f"- Held-out check, MobileFace (pairs it matched before protection: {summary['mobileface_pairs']}): "
          f"no longer matched as written {summary['mobileface_protected_saved']}, after JPEG 75 + 1080 px {summary['mobileface_protected_upload']}",
          f"- Whole-photo LPIPS median {summary['median_lpips']:.3f}; face-crop LPIPS median {summary['median_face_lpips']:.3f}, "
          f"max {summary['max_face_lpips']:.3f}",
          f"- Seconds per photo median {summary['median_seconds']:.1f}; steps median {summary['median_steps']}", "",
          md_table(["photo", "MP", "dlib dist. to original", "face LPIPS", "LPIPS", "steps", "s"],
                   [[p["photo"], p.get("megapixels"), ", ".join(f"{d:.2f}" for d in p.get("dlib_distance_to_original", [])),
                     ", ".join(f"{d:.3f}" for d in p.get("face_lpips", [])), p.get("lpips"), p.get("steps"), p.get("seconds")]
                    for p in per_photo]), "",
          "Pairs (dlib distance from the protected photo to another photo of the same person; before = the original):", "",
          md_table(["protected", "reference", "before", "as written", "JPEG 75 + 1080 px"],
                   [[p["protected"], p["reference"], p["before"], p["saved"] if p["saved"] is not None else "no face",
                     p["upload"] if p["upload"] is not None else "no face"] for p in pairs])]
    write_results(args.name, data, "\n".join(md))
    if sheet_rows:
        from benchmarks.common import RESULTS

        contact_sheet(sheet_rows, RESULTS / f"{args.name}_contact_sheet.jpg")
    print("\n".join(md[:9]))


if __name__ == "__main__":
    main()
