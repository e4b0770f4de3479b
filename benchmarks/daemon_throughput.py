"""Throughput of the daemon on a folder of 50 photos.

    python -m benchmarks.daemon_throughput [--photos 50] [--side 512] [--steps 10] [--device auto]

50 different real photos (longer side ``--side`` px) are renamed into a watched folder at once.
Reported: wall time from the first arrival to the last photo done, photos per minute, the engine's
own time per photo (the report's ``seconds``, from the ledger) and what the daemon adds around it
(wall time minus the sum of engine times: debounce, hashing, queueing, ledger writes).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from .daemon_harness import BenchDaemon, machine, photo_bytes, write_results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=50)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "staging"
        staging.mkdir()
        for i in range(args.photos):
            (staging / f"IMG_{i:04d}.jpg").write_bytes(photo_bytes(i, args.side))
        with BenchDaemon(Path(tmp), "--steps", str(args.steps), "--device", args.device) as d:
            device = d.status()["models"].get("device")
            t0 = time.time()
            for f in sorted(staging.iterdir()):
                os.rename(f, d.watch / f.name)
            d.wait_done(args.photos)
            wall = time.time() - t0
            con = sqlite3.connect(d.ledger)
            reports = [json.loads(r) for (r,) in con.execute("SELECT report FROM photos WHERE report IS NOT NULL")]
            states = dict(con.execute("SELECT state, count(*) FROM photos GROUP BY state").fetchall())
            con.close()
    engine = [r["seconds"] for r in reports if r.get("seconds")]
    data = {
        "machine": machine(), "device": device, "photos": args.photos, "side_px": args.side, "steps": args.steps,
        "states": states, "wall_seconds": round(wall, 2), "photos_per_minute": round(60 * args.photos / wall, 2),
        "engine_seconds_median": round(statistics.median(engine), 3) if engine else None,
        "daemon_overhead_seconds": round(wall - sum(engine), 2),
        "daemon_overhead_per_photo": round((wall - sum(engine)) / args.photos, 3),
    }
    write_results(
        "daemon_throughput", data,
        "| photos | side px | steps | device | wall s | photos/min | engine s/photo (median) | daemon overhead s/photo |\n"
        "|---:|---:|---:|---|---:|---:|---:|---:|",
        [f"| {args.photos} | {args.side} | {args.steps} | {device} | {data['wall_seconds']} | "
         f"{data['photos_per_minute']} | {data['engine_seconds_median']} | {data['daemon_overhead_per_photo']} |"],
        f"Daemon throughput on a folder of {args.photos} photos ({machine()}); states: {states}.",
    )


if __name__ == "__main__":
    main()
