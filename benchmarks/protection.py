"""Does protection hold? Every photo in ../shared/data/faces protected, then judged by dlib's own pipeline.

For each protected photo A' and every other photo B of the same person: dlib distance between the
faces found in A' and B's face (HOG + 5-point + 0.6 threshold), on the file as written (JPEG at
the original's quality) and after an upload-like JPEG 75 + resize to 1080 px. A pair counts as
protected when no face in A' is within 0.6 of B (or HOG finds no face in A').

Held-out judges: every face embedder among :data:`JUDGES` that protection did not optimise against
(``--judges`` names others, or ``none``) judges the same pairs with its own distance and match threshold,
counting only the pairs it matched before protection. Each judge's ROC AUC on the reference photos says how
well it tells these people apart at all (a judge near 0.5 says little about transfer).

Quality, at each photo's own resolution (``benchmarks.quality``), on the file as written: whole-photo
LPIPS-AlexNet tiled at native scale, and for every face its native crop measured with LPIPS-AlexNet (what the
engine optimizes) and three measures it does not (LPIPS-VGG, MS-SSIM, HaarPSI), each beside a noise reference
(the same crop with uniform ±4/255 noise, 8-bit). The contact sheet shows every face of every photo before |
after | difference x 8 at 100 %. A photo the pipeline judged ``weak`` is kept (``keep_weak``) and measured
like the others, and counted in ``weak_photos``.

    python -m benchmarks.protection [--targets face] [--preset stealth] [--steps N] [--name NAME] [--judges A,B|none]
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import face_photos, git_rev, machine, md_table, references, write_results
from benchmarks.quality import measure_photo, native_contact_sheet, summary_lines, table_lines
from benchmarks.quality import summarize as summarize_quality
from ghostmesh_daemon.cli.engine_options import add_engine_options, engine_settings_from_args
from ghostmesh_daemon.dlib_check import MATCH_THRESHOLD, best_match, find_faces, upload_like
from ghostmesh_daemon.engine.settings import EngineSettings
from ghostmesh_daemon.imaging import read_photo
from ghostmesh_daemon.pipeline import Protector


#: Face embedders that judge every pair besides dlib's own pipeline (held out when they are not targets).
#: ``mobilefacenet`` is not one by default: as human-models ships it, it tells these people apart
#: barely better than chance (ROC AUC 0.66, see its module), so a pair it "no longer matches" says
#: little; ``--judges mobileface,mobilefacenet`` still runs it.
JUDGES = ("mobileface", "facenet", "sface")


class EmbedderJudge:
    """A face embedder target used as a judge: its own distance, "same person" below its match threshold.

    Faces are found with dlib's detector on each photo (as an attacker would), then embedded.
    """

    def __init__(self, name: str) -> None:
        from ghostmesh_daemon.targets import create_target

        self.name = name
        self.target = create_target(name)
        if self.target.info.kind != "face" or self.target.info.match_threshold is None:
            raise SystemExit(f"--judges: {name!r} is not a face embedder with a match threshold")
        self.threshold = self.target.info.match_threshold

    def faces(self, rgb: np.ndarray, found: list) -> list[np.ndarray]:
        """Embeddings of the faces ``found`` on ``rgb`` (:func:`detected`: found once, shared by every judge)."""
        import torch

        from ghostmesh_daemon.engine.scene import FaceView, Scene, ViewGeometry

        if not found:
            return []
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
        h, w = rgb.shape[:2]
        whole = ViewGeometry(box=(0, 0, w, h), size=(h, w))
        with torch.no_grad():
            emb = self.target.embed(Scene(whole=x, faces=[FaceView(f, whole, x) for f in found]))
        return [e.numpy() for e in emb]

    def distance(self, candidates: list[np.ndarray], reference: np.ndarray) -> float | None:
        """The smallest distance from any candidate face to ``reference`` in the model's metric; None without faces."""
        if not candidates:
            return None
        import torch

        ref = torch.from_numpy(np.asarray(reference))[None]
        return min(float(self.target.distance(ref, torch.from_numpy(np.asarray(c))[None])) for c in candidates)


def detected(rgb: np.ndarray) -> list:
    """The faces dlib's detector and landmarks find on ``rgb``, as every embedder judge crops them."""
    from ghostmesh_daemon.faces import detect_faces

    return detect_faces(rgb)


def judge_names(requested: str | None, targets: list[str]) -> list[str]:
    """The judges to use: ``requested`` (comma-separated, or ``none``), by default all of :data:`JUDGES` (a target among
    them is reported as not held out)."""
    if requested is None:
        return list(JUDGES)
    return [] if requested.strip() == "none" else [n.strip() for n in requested.split(",") if n.strip()]


def reference_auc(judge: EmbedderJudge, refs: list[tuple[str, np.ndarray]]) -> float | None:
    """ROC AUC of the judge's distance on every pair of reference photos (person, embedding): 0.5 is chance."""
    same, diff = [], []
    for (pa, ea), (pb, eb) in itertools.combinations(refs, 2):
        d = judge.distance([ea], eb)
        (same if pa == pb else diff).append(d)
    if not same or not diff:
        return None
    return float(np.mean([[1.0 if s < d else 0.5 if s == d else 0.0 for d in diff] for s in same]))


def override_settings(settings: EngineSettings, items: list[str]) -> EngineSettings:
    """``settings`` with ``FIELD=VALUE`` overrides, each value parsed as the field's current type."""
    from dataclasses import fields, replace

    known = {f.name for f in fields(settings)}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in known:
            raise SystemExit(f"--set: expected FIELD=VALUE with FIELD one of {', '.join(sorted(known))}, got {item!r}")
        current = getattr(settings, name)
        kind = type(current) if current is not None else float
        # targets and target_weights are lists their own options parse; preset brings its own values
        if kind not in (bool, int, float, str) or name == "preset":
            raise SystemExit(f"--set: use --{name.replace('_', '-')} for {name}")
        try:
            parsed = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        except ValueError:
            raise SystemExit(f"--set: {name} expects {kind.__name__}, got {value!r}") from None
        settings = replace(settings, **{name: parsed})
    return settings


def _uint8(path: Path) -> np.ndarray:
    return np.ascontiguousarray((read_photo(path).rgb * 255).round().astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="protection", help="results file name")
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos (quick look)")
    parser.add_argument("--face-lpips-budget", type=float, default=None, help="per-face LPIPS budget (default 0.03)")
    parser.add_argument("--face-lpips-size", type=int, default=None, help="face LPIPS resolution (default: the preset's)")
    parser.add_argument("--eot", type=int, default=None, help="EOT samples per step (default: the settings')")
    parser.add_argument("--judges", default=None, metavar="A,B|none",
                        help=f"face embedders that judge the pairs (default: those of {', '.join(JUDGES)} not among the targets)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override any EngineSettings field (repeatable), e.g. --set face_goal=1.2")
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
    settings = override_settings(settings, args.set)
    run(settings, args.name, face_photos()[: args.limit], args.judges)


_REFS: dict[tuple[str, ...], dict] = {}


def reference_embeddings(judges: list[EmbedderJudge]) -> dict[Path, tuple[str, np.ndarray, dict]]:
    """(person, dlib descriptor, {judge: embedding}) of the largest face of every reference photo
    (computed once per set of judges: a sweep of configurations reuses them)."""
    key = tuple(j.name for j in judges)
    if key in _REFS:
        return _REFS[key]
    refs = _REFS[key] = {}
    for person, path in references():
        rgb = _uint8(path)
        found = find_faces(rgb)
        if found:  # the largest face is the person's (detect_faces lists the largest first)
            faces = detected(rgb) if judges else []
            by_judge = {}
            for judge in judges:
                emb = judge.faces(rgb, faces)
                by_judge[judge.name] = emb[0] if emb else None
            refs[path] = (person, max(found, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])).descriptor,
                          by_judge)
    return refs


def run(settings: EngineSettings, name: str, photos: list[tuple[str, Path]], judges_requested: str | None = None,
        contact_sheet: bool = True, quiet: bool = False, write: bool = True) -> dict:
    """Protect ``photos`` with ``settings``, judge every same-person pair, measure quality; write
    ``benchmarks/results/<name>.json/.md`` (and the contact sheet) and return the results."""
    revision = git_rev()  # the code that runs: a commit made while it runs is not what was measured
    protector = Protector(settings)
    targets = protector.target_names
    judges = [EmbedderJudge(n) for n in judge_names(judges_requested, targets)]
    refs = reference_embeddings(judges)
    judge_info = {
        j.name: {"held_out": j.name not in targets, "threshold": j.threshold,
                 "reference_auc": reference_auc(j, [(p, e[j.name]) for p, _, e in refs.values() if e[j.name] is not None])}
        for j in judges
    }

    # Keep a copy the pipeline judges weak (written to the temporary folder only) so it is measured too;
    # a pipeline without ``keep_weak`` writes every copy anyway.
    protect_kw = {"keep_weak": True} if "keep_weak" in inspect.signature(protector.protect_file).parameters else {}
    per_photo, pairs, sheet_rows, quality = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for person, path in photos:
            t0 = time.perf_counter()
            entry = protector.protect_file(path, out_dir=Path(tmp), **protect_kw)
            wall = time.perf_counter() - t0
            if entry.status not in ("ok", "weak") or not entry.output:
                per_photo.append({"photo": f"{person}/{path.name}", "status": entry.status, "reason": entry.reason})
                continue
            original, written = _uint8(path), _uint8(Path(entry.output))
            label = f"{person}/{path.name}"
            faces = detected(original)
            measured = measure_photo(label, original, written, faces, device=protector.device)
            quality.append(measured)
            sheet_rows.append((label, original, written, faces))
            uploaded = upload_like(written, 75, 1080)
            found_saved, found_upload, found_before = find_faces(written), find_faces(uploaded), find_faces(original)
            on = [(img, detected(img)) for img in (written, uploaded)] if judges else []
            judged = {j.name: (j.faces(original, faces), *(j.faces(img, f) for img, f in on)) for j in judges}
            for ref_path, (ref_person, desc, judge_refs) in refs.items():
                if ref_person != person or ref_path == path:
                    continue
                before = best_match(found_before, desc)
                saved = best_match(found_saved, desc)
                upload = best_match(found_upload, desc)
                pair = {
                    "protected": f"{person}/{path.name}", "reference": ref_path.name, "status": entry.status, "before": before,
                    "saved": saved, "upload": upload,
                    "protected_saved": saved is None or saved >= MATCH_THRESHOLD,
                    "protected_upload": upload is None or upload >= MATCH_THRESHOLD,
                }
                for judge in judges:  # keys <judge>_before, _saved, _upload, _matched_before, _protected_saved/upload
                    ref_emb = judge_refs[judge.name]
                    if ref_emb is None:
                        continue
                    n = judge.name
                    jb, js, ju = (judge.distance(c, ref_emb) for c in judged[n])
                    pair.update({f"{n}_before": jb, f"{n}_saved": js, f"{n}_upload": ju,
                                 f"{n}_matched_before": jb is not None and jb < judge.threshold,
                                 f"{n}_protected_saved": js is None or js >= judge.threshold,
                                 f"{n}_protected_upload": ju is None or ju >= judge.threshold})
                pairs.append(pair)
            r = entry.target_results.get("face")
            per_photo.append({
                "photo": label, "status": entry.status, "reason": entry.reason,
                "megapixels": round(original.shape[0] * original.shape[1] / 1e6, 2),
                "faces": entry.faces, "dlib_distance_to_original": entry.face_dlib_distance,
                "port_distance": r.distance_after if r else None, "lpips": entry.lpips, "face_lpips": entry.face_lpips,
                "max_delta": entry.max_delta, "max_flow_px": entry.max_flow_px, "steps": entry.steps,
                "seconds": entry.seconds, "wall_seconds": round(wall, 2),
                # measured here on the written file at native resolution (benchmarks.quality)
                "whole_photo_lpips_native": measured["whole_photo_lpips_native"],
                "face_quality": measured["faces"],
            })
            fq = measured["faces"]
            print(f"{label}: {entry.status}, {entry.steps} steps, {entry.seconds:.1f} s, dlib {entry.face_dlib_distance}, "
                  f"face LPIPS {entry.face_lpips}; native face LPIPS {[round(f['lpips_alex'], 4) for f in fq]}, "
                  f"whole {measured['whole_photo_lpips_native']:.4f}, "
                  f"faces within noise on >= 2 unoptimized measures {sum(f['two_unoptimized_within'] for f in fq)}/{len(fq)}",
                  flush=True)

    ok = [p for p in per_photo if p["status"] in ("ok", "weak")]  # both were written and are measured
    face_lp = [v for p in ok for v in p["face_lpips"]]
    quality_summary = summarize_quality(quality)
    summary = {
        "weak_photos": sum(p["status"] == "weak" for p in per_photo),
        "failed_photos": sum(p["status"] not in ("ok", "weak") for p in per_photo),
        "pairs": len(pairs),
        "protected_saved": sum(p["protected_saved"] for p in pairs),
        "protected_upload": sum(p["protected_upload"] for p in pairs),
        "median_lpips": statistics.median(p["lpips"] for p in ok) if ok else None,
        "median_face_lpips": statistics.median(face_lp) if face_lp else None,
        "max_face_lpips": max(face_lp) if face_lp else None,
        "median_seconds": statistics.median(p["seconds"] for p in ok) if ok else None,
        "median_steps": statistics.median(p["steps"] for p in ok) if ok else None,
        # native resolution, on the written files (benchmarks.quality)
        "median_face_lpips_native": quality_summary["median_face_lpips_alex_native"],
        "max_face_lpips_native": quality_summary["max_face_lpips_alex_native"],
        "median_whole_photo_lpips_native": quality_summary["median_whole_photo_lpips_native"],
        "max_whole_photo_lpips_native": quality_summary["max_whole_photo_lpips_native"],
        **{f"{m}_within_noise": quality_summary[f"{m}_within_noise"] for m in ("lpips_vgg", "ms_ssim", "haarpsi", "lpips_alex")},
        "two_unoptimized_within_noise": quality_summary["two_unoptimized_within_noise"],
        "quality": quality_summary,
    }
    for n, info in judge_info.items():
        # Each judge counts only the pairs it matched before protection (<judge>_pairs).
        matched = [p for p in pairs if p.get(f"{n}_matched_before")]
        summary[f"{n}_pairs"] = len(matched)
        summary[f"{n}_protected_saved"] = sum(p[f"{n}_protected_saved"] for p in matched)
        summary[f"{n}_protected_upload"] = sum(p[f"{n}_protected_upload"] for p in matched)
        info.update(pairs=len(matched), protected_saved=summary[f"{n}_protected_saved"],
                    protected_upload=summary[f"{n}_protected_upload"])
    summary["judges"] = judge_info
    data = {"name": name, "machine": machine(), "revision": revision, "settings": settings.to_dict(), "summary": summary,
            "photos": per_photo, "pairs": pairs}
    rate = lambda k: f"{summary[k]}/{summary['pairs']} ({100 * summary[k] / max(1, summary['pairs']):.0f} %)"
    f3 = lambda v: "n/a" if v is None else f"{v:.3f}"
    md = [f"# Protection on ../shared/data/faces ({name})", "",
          f"Machine: {data['machine']}. Revision {data['revision']}. Targets: {', '.join(settings.targets)}; "
          f"preset {settings.preset}, mode {settings.mode}, up to {settings.steps} steps; noise limit {settings.noise_limit}, "
          f"flow limit {settings.flow_limit}, LPIPS budgets {settings.lpips_budget} (photo) / {settings.face_lpips_budget} (face, at {settings.face_lpips_size} px), "
          f"EOT samples {settings.eot_samples}.", "",
          f"- Same-person pairs no longer matched by dlib (distance >= 0.6 or no face found): as written {rate('protected_saved')}, "
          f"after JPEG 75 + resize to 1080 px {rate('protected_upload')}",
          *[f"- {'Held-out judge' if info['held_out'] else 'Judge (also a target, not held out)'} {n} "
            f"(threshold {info['threshold']:.3g}; AUC on the reference pairs "
            f"{'n/a' if info['reference_auc'] is None else format(info['reference_auc'], '.2f')}, 0.5 = chance; "
            f"pairs it matched before protection: {info['pairs']}): no longer matched as written {info['protected_saved']}, "
            f"after JPEG 75 + 1080 px {info['protected_upload']}" for n, info in judge_info.items()],
          *([] if judge_info else ["- No held-out judge (every judge is a target, or --judges none)"]),
          f"- Photos judged weak by the pipeline (kept and measured here): {summary['weak_photos']}; failed: {summary['failed_photos']}",
          f"- As the pipeline reports them: whole-photo LPIPS median {f3(summary['median_lpips'])}; face-crop LPIPS median "
          f"{f3(summary['median_face_lpips'])}, max {f3(summary['max_face_lpips'])}",
          "- Seconds per photo median " + ("n/a" if summary["median_seconds"] is None else f"{summary['median_seconds']:.1f}")
          + f"; steps median {summary['median_steps']}",
          *summary_lines(quality_summary), "",
          md_table(["photo", "status", "MP", "dlib dist. to original", "face LPIPS", "LPIPS", "native whole LPIPS", "steps", "s"],
                   [[p["photo"], p["status"], p.get("megapixels"),
                     ", ".join(f"{d:.2f}" for d in p.get("dlib_distance_to_original", [])),
                     ", ".join(f"{d:.3f}" for d in p.get("face_lpips", [])), p.get("lpips"),
                     None if p.get("whole_photo_lpips_native") is None else f"{p['whole_photo_lpips_native']:.4f}",
                     p.get("steps"), p.get("seconds")]
                    for p in per_photo]), "",
          "Quality of each face at native resolution, on the file as written (contact sheet: "
          f"{name}_contact_sheet.jpg, every face at 100 %, before | after | |difference| x 8):", "",
          *table_lines(quality, whole_photo_table=False), "",
          "Pairs (dlib distance from the protected photo to another photo of the same person; before = the original; "
          "then each judge's own distance, - where it found no face):", "",
          md_table(["protected", "reference", "before", "as written", "JPEG 75 + 1080 px",
                    *(f"{n}: before / as written / after upload" for n in judge_info)],
                   [[p["protected"], p["reference"], p["before"], p["saved"] if p["saved"] is not None else "no face",
                     p["upload"] if p["upload"] is not None else "no face",
                     *(" / ".join("-" if p.get(f"{n}_{k}") is None else f"{p[f'{n}_{k}']:.3g}" for k in ("before", "saved", "upload"))
                       for n in judge_info)] for p in pairs])]
    if write:
        write_results(name, data, "\n".join(md))
    if sheet_rows and contact_sheet:
        from benchmarks.common import RESULTS

        native_contact_sheet(sheet_rows, RESULTS / f"{name}_contact_sheet.jpg")
    if not quiet:
        print("\n".join(md[: next(i for i, line in enumerate(md) if line.startswith("|")) - 1]))  # the summary lines
    return data


if __name__ == "__main__":
    main()
