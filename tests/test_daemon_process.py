"""The real daemon: `ghostmesh run` as a separate process with the real engine, on real temporary
folders, XDG folders pointed at temporary ones. Photos are real (../shared/data, scaled down so
`--steps 2` keeps each one to a second or two on a CPU).

Two steps cannot protect a face: every photo comes back weak. These tests are about the daemon's
plumbing, so their config keeps weak copies (`output.keep_weak = true`, so there are outputs to
check) and does not retry them (`retry.weak_preset = "off"`, the retry is tested in
test_daemon_weak_retry.py); a photo is finished when the ledger says done or weak.

Daemon starts are the expensive part (models load once per process), so each test drives one
daemon through several of the issue's scenarios in a row.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from ghostmesh_daemon.daemon.control import ControlUnavailable, request
from ghostmesh_daemon.imaging import output_path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "faces"
SOURCES = sorted(DATA.glob("*/*.jp*g")) if DATA.is_dir() else []

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SOURCES, reason=f"test photos not found in {DATA} (../shared/data)"),
    pytest.mark.skipif(importlib.util.find_spec("ghostmesh_daemon.pipeline") is None,
                       reason="the engine pipeline (ghostmesh_daemon/pipeline.py) is not in this tree yet"),
]

CLI = [sys.executable, "-c", "from ghostmesh_daemon.cli import entry_point; entry_point()"]


def photo_bytes(n: int, side: int = 240) -> bytes:
    """A real photo, scaled so its longer side is ``side`` px (large enough that dlib finds the face:
    a photo without one is skipped, nothing written); ``n`` picks the photo and nudges the
    size so every call gives different content (the ledger is keyed by content)."""
    src = SOURCES[n % len(SOURCES)]
    with Image.open(src) as im:
        im = im.convert("RGB")
        scale = (side + n // len(SOURCES)) / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92)
    return buf.getvalue()


class Daemon:
    """One `ghostmesh run` process and what the test needs to watch it."""

    def __init__(self, tmp: Path, watch: Path, *extra: str, display: str | None = None, steps: int = 2) -> None:
        self.tmp = tmp
        self.watch = watch
        self.env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        self.env.update(
            XDG_CONFIG_HOME=str(tmp / "config"),
            XDG_STATE_HOME=str(tmp / "state"),
            XDG_RUNTIME_DIR=str(tmp / "run"),
            PYTHONUNBUFFERED="1",
        )
        if display:
            self.env.update(DISPLAY=display, PYSTRAY_BACKEND="xorg")
        (tmp / "run").mkdir(mode=0o700, exist_ok=True)
        self.config = tmp / "ghostmesh.toml"
        if not self.config.exists():
            self.config.write_text(
                "[watcher]\nsettle_seconds = 0.5\n[retry]\nmax_attempts = 3\nbackoff_seconds = 600\nweak_preset = \"off\"\n"
                "[output]\nkeep_weak = true\n[engine]\ndevice = \"cpu\"\n[schedule]\nrescan_minutes = 60\n"
            )
        self.args = ["run", "--config", str(self.config), "--watch", str(watch), "--steps", str(steps), *extra]
        self.socket = tmp / "run" / "ghostmesh" / "control.sock"
        self.ledger = tmp / "state" / "ghostmesh" / "ledger.sqlite3"
        self.log = tmp / "state" / "ghostmesh" / "log" / "ghostmesh.log"
        self.proc: subprocess.Popen | None = None
        self.stderr_path = tmp / f"stderr-{time.monotonic_ns()}.txt"

    def start(self, timeout: float = 180.0) -> "Daemon":
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen([*CLI, *self.args], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=self._stderr, cwd=self.tmp)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.stderr()
                if self.proc.returncode == 2 and "not available" in err:
                    pytest.skip(f"the engine's models are not available here: {err.strip().splitlines()[-1]}")
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{err}")
            try:
                if request(self.socket, "status", timeout=5)["ok"]:
                    return self
            except (ControlUnavailable, OSError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"daemon did not answer within {timeout} s:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def status(self) -> dict:
        reply = request(self.socket, "status")
        assert reply["ok"], reply
        return reply["status"]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def wait(self, condition, timeout: float = 60.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status()
            if condition(s):
                return s
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon died:\n{self.stderr()}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last status {json.dumps(s, indent=1)}\n{self.stderr()}")

    def wait_done(self, n: int, timeout: float = 90.0) -> dict:
        return self.wait(lambda s: finished(s) >= n and s["current"] is None, timeout, f"{n} done")

    def terminate(self, timeout: float = 10.0) -> float:
        """SIGTERM; returns how long the process took to exit."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        self._stderr.close()
        return time.monotonic() - t0

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self._stderr.close()

    def rows(self) -> dict[str, tuple]:
        con = sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True)
        try:
            return {p: (state, attempts, err) for p, state, attempts, err in
                    con.execute("SELECT path, state, attempts, last_error FROM photos")}
        finally:
            con.close()

    def processing_started(self, path: Path) -> list[float]:
        """Times (epoch seconds) at which the log says processing of ``path`` started."""
        times = []
        for line in self.log.read_text().splitlines():
            m = re.match(r"(\S+ \S+) INFO processing (.*)$", line)
            if m and m.group(2) == str(path):
                times.append(dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp())
        return times


def finished(status: dict) -> int:
    """Photos the daemon is through with: protected (done) or weak (kept here: output.keep_weak)."""
    return status["counts"]["done"] + status["counts"]["weak"]


@pytest.fixture
def watch(tmp_path):
    w = tmp_path / "Pictures"
    w.mkdir()
    return w


def _assert_protected(src: Path) -> None:
    out = output_path(src)
    assert out.is_file(), f"no output for {src}"
    with Image.open(out) as im:
        im.load()
    with Image.open(src) as a, Image.open(out) as b:
        assert a.size == b.size


def test_daemon_end_to_end(tmp_path, watch):
    """Startup catch-up, slow chunked write, .part rename, nested folders, a corrupt file, pause and
    resume, outputs never reprocessed, SIGTERM; then a restart that redoes nothing and catches up,
    and a second instance refused."""
    existing = watch / "before-start.jpg"
    existing.write_bytes(photo_bytes(0))
    d = Daemon(tmp_path, watch, "--no-tray").start()
    d.wait_done(1)
    _assert_protected(existing)

    # A photo written slowly in chunks: processed once, only after it is complete.
    slow = watch / "slow.jpg"
    data = photo_bytes(1, 240)
    with open(slow, "wb") as f:
        step = len(data) // 5 + 1
        for i in range(0, len(data), step):
            f.write(data[i : i + step])
            f.flush()
            time.sleep(0.3)
    written = time.time()
    d.wait_done(2)
    starts = d.processing_started(slow)
    assert len(starts) == 1 and starts[0] >= written - 0.01, (starts, written)
    assert d.rows()[str(slow)][:2] == ("weak", 1)  # two steps: weak, kept by the config

    # A .part file renamed into place, in a nested folder created just now.
    nested = watch / "2024" / "06" / "trip"
    nested.mkdir(parents=True)
    part = nested / "IMG_0001.jpg.part"
    part.write_bytes(photo_bytes(2))
    time.sleep(1.2)
    assert finished(d.status()) == 2, "a .part file was processed"
    final = part.with_name("IMG_0001.jpg")
    part.rename(final)
    d.wait_done(3)
    _assert_protected(final)

    # A corrupt file is recorded as failed, with its reason; the daemon keeps going.
    bad = watch / "broken.jpg"
    bad.write_bytes(photo_bytes(3)[:2000])
    after_bad = watch / "after-broken.jpg"
    after_bad.write_bytes(photo_bytes(4))
    s = d.wait(lambda s: s["counts"]["failed"] == 1 and finished(s) == 4, 90, "corrupt failed, next done")
    (failure,) = [f for f in s["last_failures"] if f["state"] == "failed"]
    assert failure["path"] == str(bad) and failure["reason"]
    assert {f["state"] for f in s["last_failures"]} == {"failed", "weak"}  # weak photos are listed too
    assert not output_path(bad).exists()
    _assert_protected(after_bad)

    # Pause holds new photos (nothing lost), resume releases them; both through the real CLI.
    r = d.cli("pause")
    assert r.returncode == 0 and "paused" in r.stdout, r.stderr
    held = watch / "held.jpg"
    held.write_bytes(photo_bytes(5))
    d.wait(lambda s: s["queue"] == 1, 20, "held photo queued")
    time.sleep(1.0)
    s = d.status()
    assert s["state"] == "paused" and finished(s) == 4 and not output_path(held).exists()
    r = d.cli("status")
    assert r.returncode == 0 and "state:    paused (user)" in r.stdout and "queue:    1 waiting" in r.stdout
    assert "broken.jpg" in r.stdout  # the last failure and its reason
    assert "4 weak (not protected)" in r.stdout and "weak:     " in r.stdout
    r = d.cli("resume")
    assert r.returncode == 0 and "resumed" in r.stdout
    d.wait_done(5)
    _assert_protected(held)

    # Outputs were never taken for new photos.
    rows = d.rows()
    assert not [p for p in rows if ".ghost." in p]
    assert not list(watch.rglob("*.ghost.ghost.*"))
    assert not [f for f in watch.rglob(".*ghosttmp*")], "a temporary was left behind"

    # SIGTERM stops it promptly and cleanly.
    took = d.terminate()
    assert d.proc.returncode == 0 and took < 8, (d.proc.returncode, took, d.stderr())
    assert not d.socket.exists()
    with pytest.raises(ControlUnavailable, match="no daemon is running"):
        request(d.socket, "status")

    # While it is down: a new photo arrives, and a processed one is renamed.
    late = watch / "while-down.jpg"
    late.write_bytes(photo_bytes(6, 400))  # its face is small: at 240 px dlib finds none
    existing.rename(watch / "before-start-renamed.jpg")
    d2 = Daemon(tmp_path, watch).start()  # a tray is wanted, but there is no DISPLAY: headless
    d2.wait_done(6)
    _assert_protected(late)
    time.sleep(1.0)
    assert finished(d2.status()) == 6
    log = d2.log.read_text()
    assert log.count("INFO processing ") == 7  # 5 + 1 corrupt + 1 new: nothing redone after the restart
    assert not output_path(watch / "before-start-renamed.jpg").exists()  # same content: not redone
    assert log.count("running headless: no display") == 1

    # One daemon per user: a second start says so and exits 2.
    second = d2.cli(*d2.args, timeout=60)
    assert second.returncode == 2 and "already running" in second.stderr
    assert d2.terminate() < 8


def test_sigterm_and_kill_during_processing_leave_no_half_file(tmp_path, watch):
    photo = watch / "big.jpg"
    photo.write_bytes(photo_bytes(7, 480))
    # Many steps: the photo is still being processed when the signals come.
    d = Daemon(tmp_path, watch, "--no-tray", steps=400).start()
    d.wait(lambda s: s["current"] is not None and s["current"]["step"] >= 1, 120, "processing under way")
    took = d.terminate()
    assert d.proc.returncode == 0 and took < 8, (took, d.stderr())
    assert "abandoned" in d.stderr()
    assert not output_path(photo).exists()
    assert d.rows()[str(photo)][:2] == ("pending", 0)

    d = Daemon(tmp_path, watch, "--no-tray", steps=400).start()
    d.wait(lambda s: s["current"] is not None and s["current"]["step"] >= 1, 120, "processing again")
    d.kill()
    assert not output_path(photo).exists(), "kill -9 left a file under the output name"
    assert d.rows()[str(photo)][0] == "processing"

    d = Daemon(tmp_path, watch, "--no-tray").start()  # --steps 2
    d.wait_done(1)
    _assert_protected(photo)
    assert "recovered 1 photo(s)" in d.log.read_text()
    assert d.rows()[str(photo)][0] == "weak"
    d.terminate()


def test_tray_in_the_real_daemon_under_xvfb(tmp_path, watch):
    from test_daemon_tray import TrayHost, start_xvfb

    xvfb, display = start_xvfb()
    try:
        host = TrayHost(display)
        d = Daemon(tmp_path, watch, display=display).start()
        try:
            wid = host.wait_for_dock()
            (watch / "a.jpg").write_bytes(photo_bytes(8))
            d.wait_done(1)
            # Two steps: the photo is weak, and the tray says so.
            expected = "Ghost Mesh: Last photo was not protected (weak): 0 protected, 1 weak (not protected), 0 waiting"
            deadline = time.monotonic() + 10
            while host.title(wid) != expected and time.monotonic() < deadline:
                time.sleep(0.1)
            assert host.title(wid) == expected
            host.click(wid)  # a left click toggles Paused
            d.wait(lambda s: s["pause_reasons"] == ["user"], 10, "paused from the tray")
            deadline = time.monotonic() + 10
            while "Paused" not in host.title(wid) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert host.title(wid).startswith("Ghost Mesh: Paused (user)")
            host.click(wid)
            d.wait(lambda s: not s["paused"], 10, "resumed from the tray")
            assert "running headless" not in d.log.read_text()
        finally:
            took = d.terminate()
            host.close()
        assert d.proc.returncode == 0 and took < 8
    finally:
        xvfb.terminate()
        xvfb.wait(10)
