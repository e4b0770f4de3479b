"""Time from a photo becoming complete to the start of its processing (goal: under 3 s).

    python -m benchmarks.daemon_latency [--photos 10] [--settle 2.0]

A real daemon with the default settle window (2 s) watches an empty folder. Photos arrive one at a
time, in the ways writers finish a file: written in place and closed (a camera import, `cp`),
moved in from another folder (a file manager), and written as ``.part`` then renamed (browsers,
sync tools). A close or a rename inside the folder tells the daemon the writer is done, so it waits
a quarter of the settle window; a file moved in from outside arrives as a plain "created" event and
waits the whole window. "Complete" is the moment the
close or the rename returned; "processing start" is the daemon's log line for the photo. The daemon
is idle between photos (each is finished before the next arrives).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from .daemon_harness import BenchDaemon, machine, photo_bytes, write_results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=10, help="photos per arrival kind")
    ap.add_argument("--settle", type=float, default=2.0, help="watcher.settle_seconds")
    args = ap.parse_args()
    results: dict[str, list[float]] = {"written in place": [], "moved in from elsewhere": [], "renamed from .part": []}
    with tempfile.TemporaryDirectory() as tmp, BenchDaemon(Path(tmp), "--steps", "1", settle=args.settle) as d:
        staging = Path(tmp) / "staging"
        staging.mkdir()
        complete: dict[str, float] = {}
        kinds: dict[str, str] = {}
        n = 0
        for i in range(args.photos):
            for kind in results:
                n += 1
                data = photo_bytes(n, 320)
                dest = d.watch / f"{kind.split()[0]}-{i}.jpg"
                if kind == "written in place":
                    with open(dest, "wb") as f:
                        f.write(data)
                else:
                    tmpfile = staging / dest.name if kind.startswith("moved") else dest.with_name(dest.name + ".part")
                    tmpfile.write_bytes(data)
                    os.rename(tmpfile, dest)
                complete[str(dest)] = time.time()
                kinds[str(dest)] = kind
                d.wait_done(n, timeout=120)
                time.sleep(0.2)
        started = d.log_times("processing")
        for path, t in complete.items():
            results[kinds[path]].append(started[path] - t)
    rows, data = [], {"machine": machine(), "settle_seconds": args.settle, "goal_seconds": 3.0, "kinds": {}}
    for kind, values in results.items():
        s = {"n": len(values), "median": round(statistics.median(values), 3), "max": round(max(values), 3),
             "min": round(min(values), 3)}
        data["kinds"][kind] = s
        rows.append(f"| {kind} | {s['n']} | {s['median']:.2f} | {s['min']:.2f} | {s['max']:.2f} |")
    write_results(
        "daemon_latency", data, "| arrival | photos | median s | min s | max s |\n|---|---:|---:|---:|---:|", rows,
        f"Daemon latency: file complete -> processing start ({machine()}; settle window {args.settle:g} s, "
        f"goal < 3 s).",
    )


if __name__ == "__main__":
    main()
