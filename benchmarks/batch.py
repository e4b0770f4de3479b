"""Batch mode (``ghostmesh backfill``) against the plain ``protect`` command, and what Ray costs.

    python -m benchmarks.batch [--photos 6] [--size 320] [--steps 1] [--workers 1,2] [--targets face]

Measures, on this machine, on downscaled copies of the shared face photos (``--keep-weak`` so every
copy is written; the engine setting is cheap on purpose: this is about the batch machinery):

1. ``protect``: the plain command in a fresh process (wall time, models loaded once), and its
   steady rate (the report's per-photo seconds after the first photo).
2. ``backfill`` with 1, 2, ... workers on a local Ray instance, in a fresh process: wall time
   (Ray start-up and each worker's model loading included), and its steady rate (in-process run:
   completions after every worker has finished its first photo).
3. Ray's own overhead per photo: near-zero-work photos (no face, face-only targets: decoded,
   searched, skipped) through one worker, ``shared`` and ``bytes`` transfer, against
   ``Protector.protect_file`` called directly on the same photos.
4. The driver's ceiling: SHA-256 of photo bytes (MB/s) and ledger round trips (photos/s): where a
   cluster stops scaling however many workers it has.

Results: benchmarks/results/batch.json and .md (``benchmarks.common.write_results``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from .common import ROOT, face_photos, git_rev, machine, md_table, write_results


def _copies(folder: Path, n: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (person, path) in enumerate(face_photos()[:n]):
        im = Image.open(path)
        im.thumbnail((size, size))
        dest = folder / f"{i:02d}_{person}.jpg"
        im.convert("RGB").save(dest, quality=90)
        out.append(dest)
    return out


def _no_faces(folder: Path, n: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        dest = folder / f"sky_{i:03d}.jpg"
        Image.new("RGB", (size, size * 3 // 4), (90 + i % 50, 140, 200)).save(dest, quality=90)
        out.append(dest)
    return out


def _clean(folder: Path) -> None:
    for p in folder.rglob("*.ghost.*"):
        p.unlink()


def _cli(args: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ghostmesh_daemon", *args], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    wall = time.perf_counter() - t
    if r.returncode not in (0, 1):
        raise SystemExit(f"ghostmesh {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return wall, r


def plain_protect(folder: Path, n: int, engine: list[str], tmp: Path, threads: int | None = None) -> dict:
    _clean(folder)
    report = tmp / "protect.json"
    wall, _ = _cli(["protect", str(folder), "--quiet", "--keep-weak", "--report", str(report), *engine],
                   env={"OMP_NUM_THREADS": str(threads)} if threads else None)
    seconds = [e["seconds"] for e in json.loads(report.read_text())]
    steady = statistics.mean(seconds[1:]) if len(seconds) > 1 else seconds[0]
    return {"wall_s": round(wall, 2), "photos_per_min_wall": round(n / wall * 60, 2),
            "photos_per_min_steady": round(60 / steady, 2), "mean_photo_s": round(statistics.mean(seconds), 3)}


def backfill_cli(folder: Path, n: int, workers: int, engine: list[str], tmp: Path) -> dict:
    _clean(folder)
    ledger = tmp / f"cli-{workers}.sqlite3"
    wall, r = _cli(["backfill", str(folder), "--cluster", "local", "--workers", str(workers), "--quiet",
                    "--keep-weak", "--ledger", str(ledger), *engine])
    return {"wall_s": round(wall, 2), "photos_per_min_wall": round(n / wall * 60, 2), "summary": r.stdout.strip()[-300:]}


def backfill_steady(folder: Path, n: int, workers: int, settings, tmp: Path) -> dict:
    """In-process (Ray already up): completion times, to separate start-up from the steady rate."""
    from ghostmesh_daemon.batch import BackfillOptions, run_backfill

    _clean(folder)
    done: list[float] = []
    t0 = time.perf_counter()
    summary = run_backfill(BackfillOptions(paths=[folder], settings=settings, ledger=tmp / f"steady-{workers}.sqlite3",
                                           workers=workers, keep_weak=True),
                           on_entry=lambda e, earlier: done.append(time.perf_counter() - t0))
    warm = done[workers - 1] if len(done) > workers else done[0]
    steady = (len(done) - workers) / (done[-1] - warm) * 60 if len(done) > workers and done[-1] > warm else None
    return {"seconds": round(summary.seconds, 2), "first_result_s": round(done[0], 2),
            "photos_per_min_steady": round(steady, 2) if steady else None, "counts": summary.counts}


def ray_overhead(folder: Path, settings, tmp: Path) -> dict:
    """Per photo: through one Ray worker (dispatch, hash check, result, ledger) minus the same
    photos through ``Protector.protect_file`` in this process, on one torch thread like the worker.
    Medians (of per-photo times, of gaps between completions): robust to the other jobs' bursts."""
    import torch

    from ghostmesh_daemon.batch import BackfillOptions, run_backfill
    from ghostmesh_daemon.pipeline import Protector

    photos = sorted(folder.glob("sky_*.jpg"))
    os.environ["OMP_NUM_THREADS"] = "1"  # read by Protector: keep one thread, as Ray gives its 1-CPU worker
    torch.set_num_threads(1)
    protector = Protector(settings)
    protector.protect_file(photos[0])  # warm
    direct = []
    for p in photos:
        t = time.perf_counter()
        protector.protect_file(p)
        direct.append(time.perf_counter() - t)
    d = statistics.median(direct)
    out = {"photos": len(photos), "direct_ms": round(d * 1000, 2)}
    for transfer in ("shared", "bytes"):
        done: list[float] = []
        t0 = time.perf_counter()
        run_backfill(BackfillOptions(paths=[folder], settings=settings, ledger=tmp / f"over-{transfer}.sqlite3",
                                     workers=1, transfer=transfer),
                     on_entry=lambda e, earlier: done.append(time.perf_counter() - t0))
        per = statistics.median(b - a for a, b in zip(done[1:], done[2:]))  # after start-up and the first photo
        out[f"{transfer}_ms"] = round(per * 1000, 2)
        out[f"{transfer}_overhead_ms"] = round((per - d) * 1000, 2)
    return out


def driver_ceiling(tmp: Path, photo_mb: float) -> dict:
    from ghostmesh_daemon.batch.ledger import BatchLedger

    data = os.urandom(64 << 20)
    t = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    hash_mb_s = 64 / (time.perf_counter() - t)
    ledger = BatchLedger(tmp / "ceiling.sqlite3")
    run = ledger.start_run()
    entry = json.loads((tmp / "protect.json").read_text())[0]  # a real entry: the size the ledger stores
    n = 2000
    t = time.perf_counter()
    for i in range(n):
        h, d = f"{i:064x}", f"/lib/{i}.ghost.jpg"
        ledger.arrive(run, f"/lib/{i}.jpg", d, 1, 1, h)
        ledger.mark_processing(h, d)
        ledger.finish(h, d, entry, run)
    ledger_per_s = n / (time.perf_counter() - t)
    ledger.close()
    return {"sha256_MB_per_s": round(hash_mb_s, 1), "ledger_photos_per_s": round(ledger_per_s, 1),
            "report_entry_bytes": len(json.dumps(entry)), "photo_mb_assumed": photo_mb,
            "driver_photos_per_s": round(min(ledger_per_s, hash_mb_s / photo_mb), 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=6)
    ap.add_argument("--size", type=int, default=320, help="long side of the downscaled copies")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--targets", default="face")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--overhead-photos", type=int, default=80)
    ap.add_argument("--photo-mb", type=float, default=5.0, help="photo size for the driver's hashing ceiling")
    ap.add_argument("--name", default="batch")
    a = ap.parse_args(argv)
    from ghostmesh_daemon.batch.driver import import_ray

    ray = import_ray(local=True)  # a local instance, on loopback

    from ghostmesh_daemon.engine import settings_for

    engine = ["--steps", str(a.steps), "--targets", a.targets]
    settings = settings_for("stealth", steps=a.steps, targets=tuple(a.targets.split(",")))
    workers = [int(w) for w in a.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="gm-batch-bench-") as tmp_s:
        tmp = Path(tmp_s)
        faces, skies = tmp / "faces", tmp / "skies"
        _copies(faces, a.photos, a.size)
        _no_faces(skies, a.overhead_photos, a.size)
        results: dict = {"machine": machine(), "git": git_rev(), "photos": a.photos, "size": a.size, "steps": a.steps,
                         "targets": a.targets, "cpu_count": os.cpu_count(), "ray": ray.__version__}
        print("protect ...", flush=True)
        results["protect"] = plain_protect(faces, a.photos, engine, tmp)
        # Ray gives each worker OMP_NUM_THREADS = its CPUs (1 here); the same for `protect`, to compare like with like.
        results["protect_1_thread"] = plain_protect(faces, a.photos, engine, tmp, threads=1)
        results["backfill_cli"] = {}
        for w in workers:
            print(f"backfill CLI, {w} worker(s) ...", flush=True)
            results["backfill_cli"][str(w)] = backfill_cli(faces, a.photos, w, engine, tmp)
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, max(workers)), include_dashboard=False,
                 log_to_driver=False)
        try:
            results["backfill_steady"] = {}
            for w in workers:
                print(f"backfill in-process, {w} worker(s) ...", flush=True)
                results["backfill_steady"][str(w)] = backfill_steady(faces, a.photos, w, settings, tmp)
            print("Ray overhead ...", flush=True)
            results["ray_overhead"] = ray_overhead(skies, settings, tmp)
        finally:
            ray.shutdown()
        results["driver_ceiling"] = driver_ceiling(tmp, a.photo_mb)
    write_results(a.name, results, _markdown(results, workers))
    print(json.dumps(results, indent=2))


def _markdown(r: dict, workers: list[int]) -> str:
    p = r["protect"]
    p1 = r["protect_1_thread"]
    rows = [["`protect` (one process, torch threads = CPU cores)", 1, p["wall_s"], p["photos_per_min_wall"],
             p["photos_per_min_steady"]],
            ["`protect` with `OMP_NUM_THREADS=1`", 1, p1["wall_s"], p1["photos_per_min_wall"], p1["photos_per_min_steady"]]]
    for w in workers:
        c, s = r["backfill_cli"][str(w)], r["backfill_steady"][str(w)]
        rows.append([f"`backfill --workers {w}`", w, c["wall_s"], c["photos_per_min_wall"], s["photos_per_min_steady"]])
    o, d = r["ray_overhead"], r["driver_ceiling"]
    return "\n\n".join([
        "# Batch mode (`ghostmesh backfill`) vs `protect`",
        f"{r['machine']}; Ray {r['ray']}; git {r['git']}. {r['photos']} shared face photos downscaled to "
        f"{r['size']} px, `--steps {r['steps']} --targets {r['targets']} --keep-weak` (a cheap setting on purpose: "
        "this measures the batch machinery, not the protection). The CPU was shared with other jobs: every time "
        "is an upper bound, every rate a lower bound.",
        "Each Ray worker runs torch on the CPUs it reserves (`OMP_NUM_THREADS=1` with `--cpus-per-worker 1`); plain "
        "`protect` uses every core, which on a busy machine costs far more than it gains, hence both rows.",
        "Wall: a fresh process, start-up included (Python, Ray's local instance, each worker loading the models). "
        "Steady: once every worker has finished its first photo.",
        md_table(["run", "workers", "wall s", "photos/min (wall)", "photos/min (steady)"], rows),
        "## Ray's overhead per photo",
        f"{o['photos']} photos with no face (face-only targets: decoded, searched, skipped: near-zero work), one worker, "
        "one photo in flight; `direct` is `Protector.protect_file` in this process on one torch thread (as the worker); "
        "medians of per-photo times.",
        md_table(["direct ms", "shared ms", "shared overhead ms", "bytes ms", "bytes overhead ms"],
                 [[o["direct_ms"], o["shared_ms"], o["shared_overhead_ms"], o["bytes_ms"], o["bytes_overhead_ms"]]]),
        "## The driver's ceiling",
        f"SHA-256 {d['sha256_MB_per_s']} MB/s (every new photo is read once by the driver to key it); ledger "
        f"{d['ledger_photos_per_s']} photos/s (arrive + processing + finish, each a committed transaction, with a "
        f"{d['report_entry_bytes']}-byte report entry); for {d['photo_mb_assumed']} MB photos the driver keeps up with "
        f"at most about {d['driver_photos_per_s']} photos/s, whatever the number of workers.",
    ])


if __name__ == "__main__":
    main()
