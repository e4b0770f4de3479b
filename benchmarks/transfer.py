"""Does protection hold against recognizers it never saw? Leave-one-out over the four face families.

The four face recognizers we can run are of four families: dlib's ResNet (``face``), MobileFace
(``mobileface``), FaceNet's Inception-ResNet-v1 (``facenet``) and SFace's MobileNet (``sface``). For each
preset this protects the photos with

* all four (the default ``--targets auto``),
* each three, judged on the fourth (leave-one-out: the held-out rate),
* each one alone, judged on the other three,

and judges every same-person pair after an upload-like JPEG 75 + resize to 1080 px with each model's own
pipeline and match threshold (dlib: its own HOG + 5-point + 0.6 pipeline, untouched by our port; the others:
dlib's detector, then the model's crop; a judge counts only the pairs it matched before protection). Each
row carries its native-resolution quality (``benchmarks.quality``: every face on its native crop, LPIPS-AlexNet
and the three measures the engine does not optimize, beside a ±4/255 noise reference).

Writes ``benchmarks/results/<name>.json/.md`` and ``<name>_frontier.png`` (held-out rate against median
native face LPIPS: one point per preset and lever, each run as a small dot).

    python -m benchmarks.transfer [--presets stealth,panic] [--per-person N] [--configs all,loo,single] [--name transfer]
                                  [--set FIELD=VALUE ...]  (a lever, e.g. --set balance=gradnorm)
"""

from __future__ import annotations

import argparse
import statistics
import textwrap
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.common import RESULTS, face_photos, git_rev, machine, md_table, write_results
from benchmarks.protection import override_settings, run
from ghostmesh_daemon.dlib_check import MATCH_THRESHOLD
from ghostmesh_daemon.engine.settings import settings_for

FAMILIES = ("face", "mobileface", "facenet", "sface")
LABEL = {"face": "dlib", "mobileface": "MobileFace", "facenet": "FaceNet", "sface": "SFace"}


def configurations(kinds: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """(label, targets) for the requested kinds of configuration, in table order."""
    out: list[tuple[str, tuple[str, ...]]] = []
    if "all" in kinds:
        out.append(("all four", FAMILIES))
    if "loo" in kinds:
        out += [(f"without {LABEL[f]}", tuple(g for g in FAMILIES if g != f)) for f in FAMILIES]
    if "single" in kinds:
        out += [(f"{LABEL[f]} alone", (f,)) for f in FAMILIES]
    return out


def rates(data: dict) -> dict[str, tuple[int, int]]:
    """(pairs no longer matched after the upload, pairs the judge matched before) for every family."""
    s = data["summary"]
    matched_before = [p for p in data["pairs"] if p["before"] is not None and p["before"] < MATCH_THRESHOLD]
    out = {"face": (sum(p["protected_upload"] for p in matched_before), len(matched_before))}
    for n, info in s["judges"].items():
        out[n] = (info["protected_upload"], info["pairs"])
    return out


def per_person(n: int) -> list[tuple[str, Path]]:
    """The first ``n`` photos of each person (every photo when ``n`` is 0)."""
    seen: dict[str, int] = defaultdict(int)
    out = []
    for person, path in face_photos():
        if n == 0 or seen[person] < n:
            out.append((person, path))
            seen[person] += 1
    return out


def pct(hit: int, total: int) -> str:
    return "n/a" if not total else f"{hit}/{total} ({100 * hit / total:.0f} %)"


def frontier_plot(rows: list[dict], dest: Path) -> None:
    """One labelled point per preset and lever (the mean held-out rate of its leave-one-out runs, and of
    its each-alone runs, against their mean median face LPIPS); each run itself as a small dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r["held_out_rate"] is not None:
            kind = "leave-one-out" if r["config"].startswith("without") else "each alone"
            groups[(r["preset"], setting(r), kind)].append(r)
    # The legend goes below the axes, one line per point (levers' labels run long), so the points keep
    # the plot's width whatever the number of levers.
    fig, ax = plt.subplots(figsize=(9, 4.8 + 0.2 * len(groups)), dpi=120)
    for preset, marker in (("stealth", "o"), ("panic", "s")):
        pts = [r for r in rows if r["preset"] == preset and r["held_out_rate"] is not None]
        ax.scatter([r["median_face_lpips_native"] for r in pts], [100 * r["held_out_rate"] for r in pts],
                   marker=marker, s=12, alpha=0.35, color="grey")
    colours = plt.get_cmap("tab20").colors  # pairs (dark, light): the ten dark shades first, then the light
    for i, ((preset, label, kind), rs) in enumerate(sorted(groups.items())):
        x = statistics.mean(r["median_face_lpips_native"] for r in rs)
        y = 100 * statistics.mean(r["held_out_rate"] for r in rs)
        ax.scatter([x], [y], marker="o" if preset == "stealth" else "s", s=60, color=colours[(2 * i + i // 10) % 20],
                   edgecolors="black", linewidths=0.4, label=textwrap.shorten(f"{label}: {kind} (mean of {len(rs)})", 150))
    ax.axvline(0.03, color="grey", lw=0.8, ls="--")
    ax.text(0.0302, 2, "stealth budget (median 0.03)", fontsize=7, color="grey")
    for bar, text in ((60, "stealth's bar"), (80, "panic's bar")):
        ax.axhline(bar, color="grey", lw=0.8, ls=":")
        ax.text(ax.get_xlim()[0], bar + 1, f" the issue's {text} ({bar} %)", fontsize=7, color="grey")
    ax.set_xlabel("median face LPIPS-AlexNet at native resolution (lower = less visible)")
    ax.set_ylabel("held-out pairs unmatched after JPEG 75 + 1080 px (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(0, -0.12), ncol=1, frameon=False)
    fig.tight_layout()
    fig.savefig(dest)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="stealth,panic")
    parser.add_argument("--configs", default="all,loo,single", help="any of all, loo, single")
    parser.add_argument("--per-person", type=int, default=1, help="photos per person (0: all 11)")
    parser.add_argument("--steps", type=int, default=None, help="override the presets' steps (quick look only)")
    parser.add_argument("--name", default="transfer")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a lever: override an EngineSettings field in every configuration (repeatable); "
                             "the rows are labelled with it")
    parser.add_argument("--merge", metavar="A,B[:LABEL]", help="write one table and plot from earlier results (names in "
                                                                  "benchmarks/results) instead of measuring; NAME:LABEL "
                                                                  "labels that run's rows as a lever of their own (two "
                                                                  "revisions of a preset are two points)")
    args = parser.parse_args()
    if args.merge:
        import json

        parts, rows = [], []
        for item in args.merge.split(","):
            n, _, label = item.partition(":")
            parts.append(json.loads((RESULTS / f"{n}.json").read_text()))
            rows += [labelled(r, label) for r in parts[-1]["rows"]]
        if len({tuple(d["photos"]) for d in parts}) != 1:
            raise SystemExit("--merge: the results were measured on different photos")
        report(args.name, rows, parts[0]["photos"], args.per_person, [d["revision"] for d in parts])
        return
    photos = per_person(args.per_person)
    judges = ",".join(f for f in FAMILIES if f != "face")  # dlib's own pipeline judges every run anyway
    rows = []
    for preset in args.presets.split(","):
        for label, targets in configurations(args.configs.split(",")):
            overrides = {"targets": targets} | ({"steps": args.steps} if args.steps else {})
            settings = override_settings(settings_for(preset, **overrides), args.set)
            if args.set:
                label = f"{label}, {', '.join(args.set)}"
            t0 = time.perf_counter()
            data = run(settings, f"{args.name}_{preset}", photos, judges, contact_sheet=False, quiet=True, write=False)
            r = rates(data)
            held = [f for f in FAMILIES if f not in targets]
            held_hits = [r[f] for f in held if r[f][1]]
            s = data["summary"]
            row = {
                "preset": preset, "config": label, "targets": list(targets),
                "rates": {f: list(v) for f, v in r.items()},
                "held_out": held,
                # pooled over the held-out judges: pairs no longer matched / pairs they matched before
                "held_out_rate": (sum(h for h, _ in held_hits) / sum(t for _, t in held_hits)) if held_hits else None,
                "median_face_lpips_native": s["median_face_lpips_native"], "max_face_lpips_native": s["max_face_lpips_native"],
                "median_whole_photo_lpips_native": s["median_whole_photo_lpips_native"],
                "two_unoptimized_within_noise": s["two_unoptimized_within_noise"],
                "weak_photos": s["weak_photos"], "photos": len(data["photos"]),
                "median_seconds": s["median_seconds"], "wall_seconds": round(time.perf_counter() - t0, 1),
                "revision": data["revision"],
            }
            rows.append(row)
            print(f"{preset} {label}: " + ", ".join(f"{LABEL[f]} {pct(*r[f])}" for f in FAMILIES)
                  + f"; face LPIPS native median {row['median_face_lpips_native']:.4f}; "
                  f"{row['median_seconds']} s/photo", flush=True)
            # After every configuration: a run takes about an hour on two cores, and one cut short
            # keeps what it measured.
            report(args.name, rows, photos, args.per_person, revisions=[r["revision"] for r in rows])


def labelled(row: dict, label: str) -> dict:
    """``row`` with ``label`` added to its lever (its configuration's text after the first comma)."""
    if not label:
        return row
    config, sep, lever = row["config"].partition(", ")
    return {**row, "config": f"{config}, {label}" + (f" {lever}" if sep else "")}


def setting(row: dict) -> str:
    """The preset and the lever a row was measured with ("panic" or "panic, balance=shortfall"): each
    lever's leave-one-out runs are averaged on their own."""
    _, sep, lever = row["config"].partition(", ")
    return f"{row['preset']}, {lever}" if sep else row["preset"]


def report(name: str, rows: list[dict], photos: list[tuple[str, Path]] | list[str], per_person: int,
           revisions: list[str] | None = None) -> None:
    """Write ``<name>.json/.md`` and ``<name>_frontier.png`` for ``rows`` (one per preset and configuration)."""
    loo = defaultdict(list)
    for row in rows:
        if row["config"].startswith("without"):
            loo[setting(row)].append(row["held_out_rate"])
    summary = {p: {"leave_one_out_mean": statistics.mean(v) if all(x is not None for x in v) else None,
                   "configs": len(v)} for p, v in loo.items()}
    revision = ", ".join(dict.fromkeys(revisions)) if revisions else git_rev()
    data = {"name": name, "machine": machine(), "revision": revision, "photos": [x if isinstance(x, str) else f"{x[0]}/{x[1].name}" for x in photos],
            "summary": summary, "rows": rows}
    f3 = lambda v: "n/a" if v is None else f"{v:.4f}"
    md = [f"# Transfer across face-recognizer families ({name})", "",
          f"Machine: {data['machine']}. Revision {data['revision']} (where measured). Photos: {', '.join(data['photos'])} "
          f"({per_person or 'all'} per person); every same-person pair with the other photos of that person "
          "(../shared/data/faces), judged after JPEG 75 + resize to 1080 px, each judge with its own threshold and "
          "counting only the pairs it matched before protection. Held-out rate: pooled over the models not "
          "optimized against.", "",
          *[f"- {p}: leave-one-out held-out rate averaged over the four: "
            f"{'n/a' if v['leave_one_out_mean'] is None else format(100 * v['leave_one_out_mean'], '.0f') + ' %'}"
            for p, v in summary.items()], "",
          md_table(["preset", "optimized on", *(f"{LABEL[f]} unmatched" for f in FAMILIES), "held-out rate",
                    "face LPIPS native median / max", "whole native median", "faces within noise ref. (>= 2 measures)",
                    "weak", "s/photo"],
                   [[r["preset"], r["config"],
                     *((pct(*r["rates"][f]) + ("" if f in r["held_out"] else " (target)")) for f in FAMILIES),
                     "n/a" if r["held_out_rate"] is None else f"{100 * r['held_out_rate']:.0f} %",
                     f"{f3(r['median_face_lpips_native'])} / {f3(r['max_face_lpips_native'])}",
                     f3(r["median_whole_photo_lpips_native"]), "n/a" if r["two_unoptimized_within_noise"] is None else f"{100 * r['two_unoptimized_within_noise']:.0f} %",
                     f"{r['weak_photos']}/{r['photos']}", "n/a" if r["median_seconds"] is None else f"{r['median_seconds']:.1f}"] for r in rows]),
          ""]
    plotted = any(r["held_out_rate"] is not None for r in rows)
    md.append(f"Frontier plot: {name}_frontier.png" if plotted else "No frontier plot: no configuration held a model out.")
    write_results(name, data, "\n".join(md))
    if plotted:
        frontier_plot(rows, RESULTS / f"{name}_frontier.png")
    print("\n".join(md))


if __name__ == "__main__":
    main()
