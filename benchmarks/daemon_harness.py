"""What the daemon benchmarks share: a real `ghostmesh run` process on temporary folders (XDG
folders pointed at temporary ones, so the user's own config, ledger and daemon are untouched),
real photos to feed it, and writing results as JSON + Markdown into benchmarks/results/."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from ghostmesh_daemon.daemon.control import ControlUnavailable, request

ROOT = Path(__file__).resolve().parents[1]
from benchmarks.common import FACES
RESULTS = ROOT / "benchmarks" / "results"
CLI = [sys.executable, "-c", "from ghostmesh_daemon.cli import entry_point; entry_point()"]


def machine() -> str:
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        gpu = None
    cpu = f"{os.cpu_count()}-core CPU, {platform.machine()}"
    return f"{cpu}{', ' + gpu if gpu else ''}, Python {platform.python_version()}"


def photo_bytes(n: int, side: int) -> bytes:
    """A real photo (from ../shared/data when present, else a synthetic one), longer side ``side``
    px; every ``n`` gives different content."""
    sources = sorted(FACES.glob("*/*.jp*g")) if FACES.is_dir() else []
    if sources:
        with Image.open(sources[n % len(sources)]) as im:
            im = im.convert("RGB")
    else:
        im = Image.radial_gradient("L").convert("RGB").resize((side, side * 3 // 4))
    scale = (side + n // max(1, len(sources))) / max(im.size)
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92)
    return buf.getvalue()


class BenchDaemon:
    def __init__(self, tmp: Path, *args: str, settle: float = 2.0) -> None:
        self.tmp = tmp
        self.watch = tmp / "Pictures"
        self.watch.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        self.env.update(XDG_CONFIG_HOME=str(tmp / "config"), XDG_STATE_HOME=str(tmp / "state"),
                        XDG_RUNTIME_DIR=str(tmp / "run"))
        (tmp / "run").mkdir(mode=0o700, exist_ok=True)
        config = tmp / "ghostmesh.toml"
        config.write_text(f"[watcher]\nsettle_seconds = {settle}\n")
        self.socket = tmp / "run" / "ghostmesh" / "control.sock"
        self.log = tmp / "state" / "ghostmesh" / "log" / "ghostmesh.log"
        self.ledger = tmp / "state" / "ghostmesh" / "ledger.sqlite3"
        self.cmd = [*CLI, "run", "--config", str(config), "--watch", str(self.watch), "--no-tray", *args]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "BenchDaemon":
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=open(self.tmp / "stderr.txt", "w"))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited: {(self.tmp / 'stderr.txt').read_text()[-2000:]}")
            try:
                if request(self.socket, "status", timeout=5)["ok"]:
                    return self
            except (ControlUnavailable, OSError):
                time.sleep(0.1)
        raise SystemExit("daemon did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def status(self) -> dict:
        return request(self.socket, "status")["status"]

    def wait_done(self, n: int, timeout: float = 3600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status()
            if s["counts"]["done"] + s["counts"]["failed"] >= n and s["current"] is None:
                return
            time.sleep(0.05)
        raise SystemExit(f"timed out waiting for {n} photos")

    def log_times(self, what: str) -> dict[str, float]:
        """``{path: epoch seconds}`` of the first log line ``<what> <path>``."""
        out: dict[str, float] = {}
        for line in self.log.read_text().splitlines():
            m = re.match(rf"(\S+ \S+) INFO {what} (\S+)", line)
            if m and m.group(2) not in out:
                out[m.group(2)] = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU time of the daemon process so far (all its threads)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_results(name: str, data: dict, table_header: str, rows: list[str], intro: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    md = f"{intro}\n\n{table_header}\n" + "\n".join(rows) + "\n"
    (RESULTS / f"{name}.md").write_text(md)
    print(md)
