"""Start-up cost of `ghostmesh protect`, cold (no daemon) and warm (handed to a running daemon), and
of an editor export of 10 photos through each hook (darktable, Lightroom; run under lupa as in
tests/test_plugins_export.py), cold and warm. Issue 13.

    python -m benchmarks.startup [--photos 10] [--side 480] [--repeat 2] [--no-before]

Everything runs offline, as this machine is (no route to the Hugging Face hub), with the default
targets (`auto`: face + mobileface; SigLIP is not cached here) and `--steps 1`, so the engine's own
work stays small and the start-up shows. XDG folders point at temporary ones (the user's config,
state and daemon are untouched); the hub decision is remembered there like a user's would be.

Measured for each run:
- whole command: spawn to exit, wall clock;
- start to first step: spawn to the end of the optimizer's first step (cold: the engine's progress
  callback in the process; warm: the first progress event the command receives from the daemon);
- hand-off overhead (warm): whole command minus the daemon's own time for the photo (the report
  entry's ``seconds``): Python's start, the command's imports, the socket round trips, the queue.

"before" is the committed tree (``git archive HEAD``) run the same way, when it still lacks the
hand-off and the hub decision (it pays transformers' retries for SigLIP).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["--steps", "1"]


def child_cmd(mode: str, out: Path, args: list[str]) -> list[str]:
    return [sys.executable, "-c", CHILD_CODE, mode, str(out), *args]


#: Runs `ghostmesh <args>` and writes {"first_step": epoch seconds} to OUT; no torch import before
#: the command's own (warm runs must not pay for it).
CHILD_CODE = r"""
import json, sys, time
mode, out, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
first = {}
if mode == "cold":
    import ghostmesh_daemon.pipeline as p
    original = p.protect_image
    init = p.Protector.__init__
    def ready(self, *a, **k):
        init(self, *a, **k)
        first.setdefault("engine_ready", time.time())
    p.Protector.__init__ = ready
    def protect_image(*a, progress=None, **k):
        first.setdefault("optimizer_called", time.time())
        def tick(step, total):
            first.setdefault("first_step", time.time())
            if progress: progress(step, total)
        return original(*a, progress=tick, **k)
    p.protect_image = protect_image
else:
    import ghostmesh_daemon.cli.handoff as h
    original = h._events
    def events(reader):
        for e in original(reader):
            if e.get("event") == "progress":
                first.setdefault("first_step", time.time())
            yield e
    h._events = events
from ghostmesh_daemon.cli import main
code = int(main(argv))
open(out, "w").write(json.dumps(first))
sys.exit(code)
"""


def run_protect(env: dict, mode: str, photo: Path, tmp: Path, extra: list[str] = ()) -> dict:
    report = tmp / f"report-{time.monotonic_ns()}.json"
    marks = tmp / f"marks-{time.monotonic_ns()}.json"
    for old in photo.parent.glob(f"{photo.stem}.ghost*"):
        old.unlink()
    args = ["protect", *STEPS, "--keep-weak", "--report", str(report), *extra, str(photo)]
    t0 = time.time()
    r = subprocess.run(child_cmd(mode, marks, args), env=env, capture_output=True, text=True, cwd=tmp, timeout=900)
    whole = time.time() - t0
    got = json.loads(marks.read_text()) if marks.exists() else {}
    first = got.get("first_step")
    phases = {f"{k}_s": round(v - t0, 3) for k, v in got.items() if k != "first_step"}
    entries = json.loads(report.read_text()) if report.exists() else []
    entry = entries[0] if entries else {}
    handed = any("protected by the running daemon" in n for n in entry.get("notes", []))
    return {"whole_s": round(whole, 3), "first_step_s": round(first - t0, 3) if first else None,
            "engine_s": entry.get("seconds"), "status": entry.get("status"), "targets": entry.get("targets"),
            **phases, "handed_off": handed, "overhead_s": round(whole - entry["seconds"], 3) if handed and entry.get("seconds")
            else None, "exit": r.returncode, "stderr_tail": r.stderr.strip().splitlines()[-2:]}


def start_daemon(env: dict, tmp: Path) -> subprocess.Popen:
    from ghostmesh_daemon.daemon.control import ControlUnavailable, request

    watch = tmp / "watched"
    watch.mkdir(exist_ok=True)
    log = open(tmp / "daemon.stderr", "w")
    proc = subprocess.Popen([sys.executable, "-c", "from ghostmesh_daemon.cli import entry_point; entry_point()",
                             "run", "--watch", str(watch), "--no-tray"], env=env, stdout=subprocess.DEVNULL,
                            stderr=log)
    sock = Path(env["XDG_RUNTIME_DIR"]) / "ghostmesh" / "control.sock"
    t0 = time.time()
    while time.time() - t0 < 300:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited: {(tmp / 'daemon.stderr').read_text()[-2000:]}")
        try:
            if request(sock, "status", timeout=5)["ok"]:
                proc.start_seconds = time.time() - t0  # type: ignore[attr-defined]
                return proc
        except (ControlUnavailable, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit("daemon did not start")


def hook_export(which: str, env: dict, folder: Path, photos: list[bytes], tmp: Path) -> dict:
    """An export of len(photos) photos through one hook; per photo the command's time and the
    daemon's (from the report entry)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import test_plugins_export as pe

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(photos):
        p = folder / f"export {i:02d} é.jpg"
        p.write_bytes(data)
        paths.append(p)
    report = tmp / f"{which}-report.json"
    extra = f"--steps 1 --keep-weak --report {report}"
    per = []

    class Timed(pe.LightroomHost if which == "lightroom" else pe.Host):
        def execute(self, cmd: str) -> int:
            t0 = time.time()
            status = super().execute(cmd)
            took = time.time() - t0
            entry = (json.loads(report.read_text()) or [{}])[0] if report.exists() else {}
            handed = any("protected by the running daemon" in n for n in entry.get("notes", []))
            per.append({"command_s": round(took, 3), "engine_s": entry.get("seconds"), "handed_off": handed,
                        "status": entry.get("status")})
            return status

    t0 = time.time()
    if which == "darktable":
        dt = pe.load_darktable(tmp, {"executable": str(ghostmesh_exe(tmp)), "targets": "", "extra_args": extra},
                               host=Timed(env=env))
        for p in paths:
            dt.export(p)
    else:
        lr = pe.load_lightroom(tmp)
        host = Timed(env=env)
        lr.host.env = env
        lr.host.execute = host.execute  # the stub calls host.execute through the Lua table
        lr.export(pe.lr_properties(ghostmesh_exe(tmp), ghostmesh_targets="", ghostmesh_extra_args=extra),
                  [(p, True, None) for p in paths])
    total = time.time() - t0
    handed = [p for p in per if p["handed_off"]]
    overhead = [p["command_s"] - p["engine_s"] for p in handed if p["engine_s"] is not None]
    return {"photos": len(paths), "total_s": round(total, 2), "per_photo_s": round(total / len(paths), 3),
            "handed_off": len(handed), "overhead_per_photo_s": round(statistics.mean(overhead), 3) if overhead else None,
            "commands": per}


def ghostmesh_exe(tmp: Path) -> Path:
    exe = tmp / "bin" / "ghostmesh"
    if not exe.exists():
        exe.parent.mkdir(parents=True, exist_ok=True)
        exe.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'from ghostmesh_daemon.cli import entry_point; "
                       "entry_point()' \"$@\"\n")
        exe.chmod(0o755)
    return exe


def med(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(vals), 3) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=10, help="photos per editor export")
    ap.add_argument("--side", type=int, default=480, help="longer side of the test photos, px")
    ap.add_argument("--repeat", type=int, default=2, help="runs per single-photo configuration")
    ap.add_argument("--no-before", action="store_true", help="skip the committed tree's run")
    ap.add_argument("--no-hooks", action="store_true", help="skip the editor exports")
    opts = ap.parse_args()

    from benchmarks.common import git_rev, machine, md_table, write_results
    from benchmarks.daemon_harness import photo_bytes

    tmp = Path(tempfile.mkdtemp(prefix="gm-startup-"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DISPLAY", "WAYLAND_DISPLAY", "GHOSTMESH_NO_DAEMON")}
    env.update(XDG_CONFIG_HOME=str(tmp / "config"), XDG_STATE_HOME=str(tmp / "state"),
               XDG_RUNTIME_DIR=str(tmp / "run"), PYTHONUNBUFFERED="1")
    (tmp / "run").mkdir(mode=0o700)
    work = tmp / "photos"
    work.mkdir()
    photo = work / "IMG_0001.jpg"
    photo.write_bytes(photo_bytes(0, opts.side))
    results: dict = {"machine": machine(), "revision": git_rev(), "photo_side_px": opts.side, "steps": 1,
                     "targets": "auto (default)", "network": "none to the hub (DNS fails), HF_HUB_OFFLINE not set"}
    rows = []

    if not opts.no_before:
        before = tmp / "before"
        before.mkdir()
        subprocess.run(f"git archive HEAD ghostmesh_daemon | tar -x -C {before}", shell=True, cwd=ROOT, check=True)
        if (before / "ghostmesh_daemon" / "hub.py").exists():
            results["before"] = "HEAD already has the hand-off: no before run"
        else:
            benv = {**env, "PYTHONPATH": str(before), "XDG_STATE_HOME": str(tmp / "state-before")}
            runs = [run_protect(benv, "cold", photo, tmp) for _ in range(1)]
            results["before_cold"] = runs
            rows.append(["before (committed tree), cold", med(runs, "first_step_s"), med(runs, "whole_s"), None,
                         len(runs)])

    print("cold, first run (one probe of the hub, then remembered) ...", flush=True)
    first = [run_protect(env, "cold", photo, tmp)]
    print("cold, remembered ...", flush=True)
    cold = [run_protect(env, "cold", photo, tmp) for _ in range(opts.repeat)]
    results["cold_first_run"], results["cold"] = first, cold
    rows.append(["cold, first run ever (one hub probe)", med(first, "first_step_s"), med(first, "whole_s"), None, 1])
    rows.append(["cold (no daemon)", med(cold, "first_step_s"), med(cold, "whole_s"), None, len(cold)])
    results["cold_phases_median_s"] = {k: med(cold, k) for k in ("engine_ready_s", "optimizer_called_s", "first_step_s")}

    print("starting the daemon ...", flush=True)
    daemon = start_daemon(env, tmp)
    try:
        results["daemon_start_s"] = round(daemon.start_seconds, 2)  # type: ignore[attr-defined]
        warm = [run_protect(env, "warm", photo, tmp) for _ in range(max(3, opts.repeat))]
        results["warm"] = warm
        assert all(r["handed_off"] for r in warm), warm
        rows.append(["warm (handed to the daemon)", med(warm, "first_step_s"), med(warm, "whole_s"),
                     med(warm, "overhead_s"), len(warm)])
        hooks = {}
        if not opts.no_hooks:
            data = [photo_bytes(i + 1, opts.side) for i in range(opts.photos)]
            for which in ("darktable", "lightroom"):
                print(f"{which} export, warm ...", flush=True)
                hooks[f"{which}_warm"] = hook_export(which, env, tmp / f"{which}-warm", data, tmp)
    finally:
        daemon.terminate()
        daemon.wait(30)
    if not opts.no_hooks:
        for which in ("darktable", "lightroom"):
            print(f"{which} export, cold ...", flush=True)
            hooks[f"{which}_cold"] = hook_export(which, env, tmp / f"{which}-cold", data, tmp)
        results["hooks"] = hooks

    md = ["# Start-up: cold vs handed to the daemon (issue 13)\n",
          f"Machine: {results['machine']}; revision {results['revision']}. Offline: {results['network']}. "
          f"One {opts.side} px photo, default targets, `--steps 1`. The CPU was shared with other jobs: every "
          "figure is an upper bound.\n",
          md_table(["run", "start to first step, s (median)", "whole command, s (median)",
                    "hand-off overhead, s (median)", "runs"], rows), ""]
    ph = results["cold_phases_median_s"]
    md.append(f"Cold, where the time to the first step goes (median): the command's start, imports and models "
              f"loaded (`Protector` built) {ph['engine_ready_s']} s; then the photo decoded and its faces found, "
              f"optimizer called at {ph['optimizer_called_s']} s; its preparation (clean views, LPIPS references) "
              f"and one step, done at {ph['first_step_s']} s.\n")
    md.append(f"Daemon start (engine loaded, socket answering): {results['daemon_start_s']} s.\n")
    if not opts.no_hooks:
        hrows = []
        for key, h in hooks.items():
            hrows.append([key.replace("_", ", "), h["photos"], h["total_s"], h["per_photo_s"], h["handed_off"],
                          h["overhead_per_photo_s"]])
        md.append(f"Editor exports of {opts.photos} photos through each hook (lupa, the real command per photo):\n")
        md.append(md_table(["hook", "photos", "total, s", "per photo, s", "handed off", "hand-off overhead per photo, s"],
                           hrows))
    md.append("\nGoals: cold start to first step <= 8 s with the default targets offline; warm hand-off overhead "
              "<= 0.5 s per photo.")
    j, m = write_results("startup", results, "\n".join(md))
    print(m.read_text())
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
