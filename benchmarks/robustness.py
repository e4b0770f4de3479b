"""Protection across settings: budgets, steps, presets, the noise/flow/EOT ablation and transfer.

Runs ``benchmarks.protection`` once per configuration (each in its own process, results in
``benchmarks/results/protection_<name>.json``), then writes one table and one plot. Every configuration is
judged by every embedder of ``benchmarks.protection.JUDGES`` (mobileface): held out where it
is not a target, marked "(target)" where it is.

    python -m benchmarks.robustness [--only NAME,...] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchmarks.common import RESULTS, git_rev, md_table, write_results
from benchmarks.protection import JUDGES
from ghostmesh_daemon.targets import list_targets

#: How the table and plot name each judge.
JUDGE_LABELS = {"mobileface": "MobileFace", "mobilefacenet": "MobileFaceNet"}

#: name -> (group, label, extra arguments for benchmarks.protection)
CONFIGS: dict[str, tuple[str, str, list[str]]] = {
    "auto": ("default", "defaults: targets auto (face + mobileface), stealth, face LPIPS at 512 px", ["--targets", "auto"]),
    "face": ("default", "stealth, target face only, face LPIPS at 512 px", ["--targets", "face"]),
    "mobileface": ("transfer", "target mobileface (256 px)", ["--targets", "mobileface", "--face-lpips-size", "256"]),
    "noise_only": ("ablation", "noise only (256 px)", ["--targets", "face", "--flow-limit", "0.000001", "--face-lpips-size", "256"]),
    "flow_only": ("ablation", "flow only (256 px)", ["--targets", "face", "--noise-limit", "0.000001", "--face-lpips-size", "256"]),
    "both": ("ablation", "noise + flow (256 px)", ["--targets", "face", "--face-lpips-size", "256"]),
    "both_eot": ("ablation", "noise + flow + EOT (256 px)", ["--targets", "face", "--eot", "1", "--face-lpips-size", "256"]),
    "panic": ("preset", "panic preset without input diversity (256 px)", ["--targets", "face", "--preset", "panic", "--align-samples", "0"]),
    "budget_002": ("budget", "face LPIPS budget 0.02", ["--targets", "face", "--face-lpips-budget", "0.02"]),
    "budget_005": ("budget", "face LPIPS budget 0.05", ["--targets", "face", "--face-lpips-budget", "0.05"]),
    "budget_008": ("budget", "face LPIPS budget 0.08", ["--targets", "face", "--face-lpips-budget", "0.08", "--lpips-budget", "0.08"]),
    "steps_10": ("steps", "at most 10 steps", ["--targets", "face", "--steps", "10"]),
    "steps_25": ("steps", "at most 25 steps", ["--targets", "face", "--steps", "25"]),
    "auto_eot": ("transfer", "defaults + EOT (1 upload draw per step)", ["--targets", "auto", "--eot", "1"]),
    "panic_budget_002": ("budget", "panic, face LPIPS budget 0.02", ["--targets", "face", "--preset", "panic", "--align-samples", "0", "--face-lpips-budget", "0.02"]),
    "panic_budget_005": ("budget", "panic, face LPIPS budget 0.05", ["--targets", "face", "--preset", "panic", "--align-samples", "0", "--face-lpips-budget", "0.05"]),
    "panic_align": ("transfer", "panic preset as shipped: 2 re-aligned copies per step (256 px)", ["--targets", "face", "--preset", "panic"]),
    "auto_panic": ("transfer", "targets auto, panic preset as shipped (the daemon's retry for weak photos)", ["--targets", "auto", "--preset", "panic"]),
    "face_align": ("transfer", "target face, 2 re-aligned copies per step (input diversity)", ["--targets", "face", "--align-samples", "2"]),
    "panic_steps_10": ("steps", "panic, at most 10 steps", ["--targets", "face", "--preset", "panic", "--align-samples", "0", "--steps", "10"]),
}


def _rate(a: int, b: int) -> str:
    return f"{a}/{b} ({100 * a / b:.0f} %)" if b else "n/a"


def _mean_gain(data: dict, judge: str) -> float | None:
    """Mean of (distance after JPEG 75 + 1080 px - distance before) over the pairs ``judge`` matched before."""
    gains = [p[f"{judge}_upload"] - p[f"{judge}_before"] for p in data["pairs"]
             if p.get(f"{judge}_matched_before") and p.get(f"{judge}_upload") is not None]
    return round(sum(gains) / len(gains), 3) if gains else None


def _rates(data: dict) -> tuple[float, float | None]:
    """(dlib, MobileFace) share of pairs no longer matched after JPEG 75 + 1080 px, in %."""
    s = data["summary"]
    mf = 100 * s["mobileface_protected_upload"] / s["mobileface_pairs"] if s.get("mobileface_pairs") else None
    return 100 * s["protected_upload"] / max(1, s["pairs"]), mf


def _plot(records: list[tuple[str, str, str, dict]]) -> None:
    """Three panels: rate vs face LPIPS budget and vs steps, per preset (target face only; dlib
    solid, held-out MobileFace dashed), and the ablation/transfer configurations as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), gridspec_kw={"width_ratios": [1, 1, 1.1]})
    face_only = [(n, d) for n, g, _, d in records if d["settings"]["targets"] == ["face"] and g in ("default", "preset", "budget", "steps")]
    for preset, colour in (("stealth", "tab:blue"), ("panic", "tab:red")):
        runs = [(n, d) for n, d in face_only if d["settings"]["preset"] == preset]
        for ax, key, pick in ((axes[0], "face_lpips_budget", lambda n: "steps" not in n),
                              (axes[1], "steps", lambda n: "budget" not in n)):
            pts = sorted((d["settings"][key], *_rates(d)) for n, d in runs if pick(n))
            if not pts:
                continue
            xs = [p[0] for p in pts]
            name = "panic without input diversity" if preset == "panic" else preset
            ax.plot(xs, [p[1] for p in pts], "o-", color=colour, label=f"{name}: dlib")
            ax.plot(xs, [p[2] for p in pts], "x--", color=colour, label=f"{name}: MobileFace (held out)")
    axes[0].set_xlabel("face LPIPS budget")
    axes[1].set_xlabel("most steps allowed")
    axes[1].set_xscale("log")
    for ax in axes[:2]:
        ax.set_ylabel("% pairs no longer matched (JPEG 75 + 1080 px)")
        ax.set_ylim(-5, 105)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    bars = [(name, *_rates(d)) for name, g, _, d in records if g in ("ablation", "transfer", "default")]
    ys = range(len(bars))
    axes[2].barh([y + 0.2 for y in ys], [b[1] for b in bars], height=0.4, label="dlib")
    axes[2].barh([y - 0.2 for y in ys], [b[2] or 0 for b in bars], height=0.4, label="MobileFace")
    axes[2].set_yticks(list(ys), [b[0] for b in bars], fontsize=8)
    axes[2].set_xlabel("% pairs no longer matched (JPEG 75 + 1080 px)")
    axes[2].legend(fontsize=7)
    axes[2].set_title("configurations (robustness.md); MobileFace is a target in auto*, mobileface", fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "robustness.png", dpi=100)
    plt.close(fig)


def _reap(running: list[subprocess.Popen], failed: list[str]) -> list[subprocess.Popen]:
    """Wait for one of ``running`` to end; the ones still running."""
    import time

    while True:
        for proc in running:
            if proc.poll() is not None:
                if proc.returncode != 0:
                    failed.append(proc.args[proc.args.index("--name") + 1])
                return [p for p in running if p is not proc]
        time.sleep(0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="comma-separated configuration names")
    p.add_argument("--reuse", action="store_true", help="keep results that already exist")
    p.add_argument("--jobs", type=int, default=1, help="configurations run at once (default 1: clean timings)")
    args = p.parse_args()
    names = args.only.split(",") if args.only else list(CONFIGS)
    commands = [[sys.executable, "-m", "benchmarks.protection", "--name", f"protection_{name}", *CONFIGS[name][2],
                 "--judges", ",".join(JUDGES)]
                for name in names if not (args.reuse and (RESULTS / f"protection_{name}.json").exists())]
    running: list[subprocess.Popen] = []
    failed = []
    for cmd in commands:  # up to --jobs at once: the seconds per photo then include the others' load
        while len(running) >= args.jobs:
            running = _reap(running, failed)
        print(" ".join(cmd), flush=True)
        running.append(subprocess.Popen(cmd))
    while running:
        running = _reap(running, failed)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")

    rows, records, sources = [], [], []
    for name, (group, label, _) in CONFIGS.items():
        path = RESULTS / f"protection_{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        sources.append(data)
        records.append((name, group, label, data))
        s, targets = data["summary"], data.get("settings", {}).get("targets", [])
        if "auto" in targets:
            targets = [*targets, *list_targets(auto=True)]
        judged = []
        for judge in JUDGES:  # files written before a judge existed (or with it skipped) show n/a
            cell = _rate(s.get(f"{judge}_protected_upload", 0), s.get(f"{judge}_pairs", 0))
            judged.append(f"{cell} (target)" if judge in targets and s.get(f"{judge}_pairs") else cell)
        rows.append([group, label, _rate(s["protected_saved"], s["pairs"]), _rate(s["protected_upload"], s["pairs"]),
                     *judged, *(_mean_gain(data, judge) for judge in JUDGES), s["median_lpips"], s["median_face_lpips"], s["max_face_lpips"], s["median_steps"],
                     s["median_seconds"], data.get("revision", "?")])
    # The table names the machines and engine revisions its rows were measured on (a row can come
    # from another machine, e.g. a lent GPU, than the one that assembles the table).
    origins = sorted({f"{d['machine']} (revision {d['revision']})" for d in sources})
    md = ["# Protection across settings", "", "Measured on: " + "; ".join(origins) + ".",
          "Pairs: each protected photo vs every other photo of the same person in ../shared/data/faces (and the "
          "known people in _mixed). dlib: its own pipeline (HOG + 5-point + 0.6). MobileFace: a judge held out unless "
          "marked (target); it counts the pairs it matched before protection, with its own cosine distance threshold "
          "(each results file gives it, and the judge's AUC on the reference pairs); its mean distance gain is how far "
          "protection moved those pairs apart in its own metric, after the upload (it shows progress a pass/fail "
          "count hides: MobileFace's pairs start a median 0.2 under its threshold). s/photo includes reading, "
          "detection, writing and the report's own dlib check; with --jobs N it also includes the other jobs' load.", "",
          md_table(["group", "configuration", "dlib: protected as written", "dlib: after JPEG 75 + 1080 px",
                    *(f"{JUDGE_LABELS.get(j, j)}: after JPEG 75 + 1080 px" for j in JUDGES),
                    *(f"{JUDGE_LABELS.get(j, j)}: mean distance gain" for j in JUDGES),
                    "LPIPS median", "face LPIPS median", "face LPIPS max", "steps median", "s/photo median", "revision"], rows)]
    write_results("robustness", {"measured_on": origins, "assembled_at": git_rev(), "rows": rows}, "\n".join(md))
    if records:
        _plot(records)
    print("\n".join(md))


if __name__ == "__main__":
    main()
