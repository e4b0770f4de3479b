"""CPU used by an idle daemon (goal: under 1 % of one core).

    python -m benchmarks.daemon_idle [--seconds 60]

A real daemon (engine loaded, native watcher, scheduler, control socket; no tray) watches a folder
with 20 protected photos in it and nothing new arriving. After it has settled, its CPU time (user +
system, all threads, from /proc) is read at the start and the end of the window.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from .daemon_harness import BenchDaemon, machine, photo_bytes, write_results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        watch = Path(tmp) / "Pictures"
        watch.mkdir()
        for i in range(20):
            (watch / f"p{i}.jpg").write_bytes(photo_bytes(i, 160))
        with BenchDaemon(Path(tmp), "--steps", "1") as d:
            d.wait_done(20, timeout=600)
            time.sleep(5)
            c0, t0 = d.cpu_seconds(), time.monotonic()
            time.sleep(args.seconds)
            c1, t1 = d.cpu_seconds(), time.monotonic()
    percent = 100 * (c1 - c0) / (t1 - t0)
    data = {"machine": machine(), "seconds": round(t1 - t0, 1), "cpu_seconds": round(c1 - c0, 3),
            "percent_of_one_core": round(percent, 3), "goal_percent": 1.0}
    write_results(
        "daemon_idle", data, "| window s | CPU s | % of one core |\n|---:|---:|---:|",
        [f"| {data['seconds']} | {data['cpu_seconds']} | {data['percent_of_one_core']} |"],
        f"Idle daemon CPU ({machine()}; 20 photos already protected, nothing arriving; goal < 1 % of a core).",
    )


if __name__ == "__main__":
    main()
