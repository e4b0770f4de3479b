"""The daemon's parts in one process, with real files, real SQLite, real watchdog observers and a
real (small) processing function in place of the engine. The real `ghostmesh run` process with the
real engine is tested in test_daemon_process.py."""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from ghostmesh_daemon.config import WatchFolder
from ghostmesh_daemon.daemon.control import ControlServer, ControlUnavailable, request
from ghostmesh_daemon.daemon.controller import Controller, ControllerOptions, Found, Maintain
from ghostmesh_daemon.daemon.debouncer import Debouncer
from ghostmesh_daemon.daemon.ledger import Ledger
from ghostmesh_daemon.daemon.lock import AlreadyRunning, InstanceLock
from ghostmesh_daemon.daemon.matcher import Matcher
from ghostmesh_daemon.daemon.power import on_battery
from ghostmesh_daemon.daemon.readiness import content_hash, decode_problem
from ghostmesh_daemon.daemon.scanner import scan
from ghostmesh_daemon.daemon.scheduler import Scheduler, in_window
from ghostmesh_daemon.daemon.watcher import Watcher
from ghostmesh_daemon.imaging import output_path
from ghostmesh_daemon.imaging.atomic import atomic_output, temp_name
from ghostmesh_daemon.report import ReportEntry


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_thread_leaks():
    """Fail a test that leaves threads running (every part must stop what it started)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"threads leaked: {[t.name for t in leaked]}"


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (96, 64)) -> bytes:
    img = Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    for x in range(0, size[0], 8):  # some structure, so sizes differ and the JPEG is not trivial
        img.putpixel((x, (x * 7 + seed) % size[1]), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_photo(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(seed))
    return path


def wait_for(condition, timeout: float = 10.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {getattr(condition, '__name__', condition)}")


class SmallProcess:
    """A real, small stand-in for the engine: decodes the photo, takes ``delay`` seconds in
    ``steps`` steps (honouring should_stop, reporting progress), writes ``<stem>.ghost<ext>``
    atomically. Records what it was called with."""

    def __init__(self, delay: float = 0.0, steps: int = 4) -> None:
        self.delay = delay
        self.steps = steps
        self.calls: list[Path] = []
        self.started = threading.Event()

    def __call__(self, src: Path, *, should_stop, progress) -> ReportEntry:
        self.calls.append(src)
        self.started.set()
        try:
            with Image.open(src) as im:
                im.load()
                img, fmt = im.copy(), im.format
        except Exception as e:
            return ReportEntry.failed(src, f"cannot decode: {e}")
        for i in range(self.steps):
            if should_stop():
                return ReportEntry.failed(src, "stopped before the end")
            time.sleep(self.delay / self.steps)
            progress(i + 1, self.steps)
        dest = output_path(src)
        with atomic_output(dest) as tmp:
            img.save(tmp, format=fmt)
        return ReportEntry(input=str(src), output=str(dest), status="ok")


@pytest.fixture
def make_controller(tmp_path):
    made: list[Controller] = []

    def make(process=None, **options) -> Controller:
        root = tmp_path / "watch"
        root.mkdir(exist_ok=True)
        opts = ControllerOptions(roots=[root], matcher=Matcher(), settle_seconds=0.2, backoff_seconds=0.3)
        for k, v in options.items():
            setattr(opts, k, v)
        c = Controller(tmp_path / "ledger.sqlite3", process or SmallProcess(), opts)
        c.start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()
        assert c.join(10), "controller did not stop"


def ledger_rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT path, state, attempts, last_error, output FROM photos ORDER BY queued_at").fetchall()
    finally:
        con.close()


# --- matcher and scanner -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel, ignored",
    [
        ("IMG_1.jpg", None),
        ("sub/deeper/IMG_1.JPG", None),
        ("IMG_1.ghost.jpg", "our output"),
        ("IMG_1.jpg.part", "partial"),
        ("IMG_1.jpg.crdownload", "partial"),
        ("IMG_1.tmp", "partial"),
        ("~syncthing~IMG_1.jpg.tmp", "partial"),
        (".IMG_1.jpg", "hidden"),
        (".hidden/IMG_1.jpg", "hidden"),
        ("Protected/IMG_1.jpg", "output folder"),
        ("notes.txt", "not a supported"),
        ("IMG_1_edit.jpg", "ignore pattern"),
        ("Exports/IMG_2.jpg", "ignore pattern"),
    ],
)
def test_matcher_rejects_our_files_partials_and_user_patterns(tmp_path, rel, ignored):
    m = Matcher(output_subfolder="Protected", patterns=("*_edit.jpg", "Exports/*"))
    reason = m.reason(tmp_path / rel, tmp_path)
    if ignored is None:
        assert reason is None
    else:
        assert reason is not None and ignored in reason


def test_matcher_rejects_our_temporaries_before_user_patterns(tmp_path):
    tmp = temp_name(tmp_path / "IMG_1.ghost.jpg")
    # Even a user pattern that would "include" everything cannot make a temporary a photo.
    assert Matcher(patterns=()).reason(tmp, tmp_path) == "our temporary file"


def test_scanner_yields_photos_and_errors_and_keeps_going(tmp_path):
    write_photo(tmp_path / "a.jpg")
    write_photo(tmp_path / "n1" / "n2" / "b.jpg", 1)
    write_photo(tmp_path / "a.ghost.jpg", 2)
    write_photo(tmp_path / ".cache" / "c.jpg", 3)
    locked = tmp_path / "locked"
    write_photo(locked / "d.jpg", 4)
    locked.chmod(0)
    try:
        results = list(scan(tmp_path, Matcher()))
    finally:
        locked.chmod(0o755)
    ok = sorted(r.path.relative_to(tmp_path).as_posix() for r in results if r.error is None)
    errors = [r for r in results if r.error]
    assert "a.jpg" in ok and "n1/n2/b.jpg" in ok
    assert "a.ghost.jpg" not in ok and ".cache/c.jpg" not in ok
    if os.geteuid() != 0:  # root reads anything
        assert [r.path for r in errors] == [locked] and "cannot read folder" in errors[0].error


def test_decode_check_tells_truncated_from_complete(tmp_path):
    data = jpeg_bytes(5, (256, 256))
    full = tmp_path / "full.jpg"
    full.write_bytes(data)
    half = tmp_path / "half.jpg"
    half.write_bytes(data[: len(data) // 2])
    assert decode_problem(full) is None
    assert decode_problem(half) is not None
    assert decode_problem(Path("/work/shared/data/nonexistent.jpg")) is not None


# --- debouncer with a real watcher ---------------------------------------------------------------


def _watch(tmp_path, settle=0.5, poll=False):
    emitted: list[tuple[Path, float]] = []
    deb = Debouncer(lambda p: emitted.append((p, time.monotonic())), settle)
    w = Watcher([WatchFolder(tmp_path, poll)], Matcher(), lambda p, closed: deb.touch(p, closed=closed),
                lambda d: None, poll_interval=0.3)
    deb.start()
    w.start()
    return deb, w, emitted


@pytest.mark.parametrize("poll", [False, True], ids=["native", "polling"])
def test_slow_chunked_write_is_released_once_after_it_completes(tmp_path, poll):
    deb, w, emitted = _watch(tmp_path, settle=0.5, poll=poll)
    try:
        data = jpeg_bytes(1, (400, 300))
        chunks = [data[i : i + len(data) // 6 + 1] for i in range(0, len(data), len(data) // 6 + 1)]
        path = tmp_path / "slow.jpg"
        with open(path, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                time.sleep(0.35)  # shorter than the settle window: must never be released mid-write
            done = time.monotonic()
        wait_for(lambda: emitted, timeout=10)
        time.sleep(1.0)  # nothing more may come
        assert len(emitted) == 1
        assert emitted[0][0] == path
        assert emitted[0][1] >= done
        assert decode_problem(path) is None
    finally:
        w.stop()
        deb.stop()


def test_a_writer_that_pauses_longer_than_the_window_is_held_while_the_file_does_not_decode(tmp_path):
    deb, w, emitted = _watch(tmp_path, settle=0.3)
    try:
        data = jpeg_bytes(2, (400, 300))
        path = tmp_path / "paused-writer.jpg"
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(0.7)  # > settle, < settle * decode_grace
            assert not emitted, "a half-written JPEG was released"
            f.write(data[len(data) // 2 :])
        wait_for(lambda: emitted)
        assert [p for p, _ in emitted] == [path]
    finally:
        w.stop()
        deb.stop()


def test_part_file_renamed_into_place_and_nested_folders_arrive(tmp_path):
    deb, w, emitted = _watch(tmp_path, settle=0.3)
    try:
        part = tmp_path / "a" / "b" / "IMG_9.jpg.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(jpeg_bytes(3))
        time.sleep(0.6)
        assert not emitted, "a .part file was released"
        final = part.with_name("IMG_9.jpg")
        part.rename(final)
        wait_for(lambda: emitted)
        time.sleep(0.5)
        assert [p for p, _ in emitted] == [final]
    finally:
        w.stop()
        deb.stop()


def test_corrupt_file_is_released_after_the_decode_grace(tmp_path):
    deb, w, emitted = _watch(tmp_path, settle=0.2)
    try:
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
        t0 = time.monotonic()
        wait_for(lambda: emitted, timeout=5)
        assert emitted[0][0] == bad
        assert emitted[0][1] - t0 >= 0.2 * 3 - 0.05  # held for the grace, then released to be recorded
    finally:
        w.stop()
        deb.stop()


# --- ledger --------------------------------------------------------------------------------------


def test_ledger_is_keyed_by_content(tmp_path):
    led = Ledger(tmp_path / "l.sqlite3")
    try:
        assert led._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        p1, new = led.arrive("/x/a.jpg", 10, 1, "h1")
        assert new and p1.state == "pending"
        led.mark_processing("h1")
        led.mark_done("h1", "/x/a.ghost.jpg", "1")
        # the same content under another name (a rename, a copy brought back): not queued again
        again, new = led.arrive("/x/renamed.jpg", 10, 2, "h1")
        assert not new and again.state == "done" and again.path == "/x/a.jpg"
        assert led.known_hash("/x/renamed.jpg", 10, 2) == "h1"
        # the same path with new content: a new photo
        changed, new = led.arrive("/x/a.jpg", 11, 3, "h2")
        assert new and changed.state == "pending"
        assert led.known_hash("/x/a.jpg", 10, 1) is None  # the old signature is no longer trusted
        assert led.counts()["done"] == 1 and led.counts()["pending"] == 1
    finally:
        led.close()


def test_ledger_recovers_interrupted_work_and_bounds_crash_loops(tmp_path):
    led = Ledger(tmp_path / "l.sqlite3")
    try:
        led.arrive("/x/a.jpg", 1, 1, "a")
        led.arrive("/x/b.jpg", 1, 1, "b")
        led.mark_processing("a")
        assert led.recover(max_attempts=3) == 1
        assert led.photo("a").state == "pending" and led.photo("a").attempts == 1
        for _ in range(2):
            led.mark_processing("a")
            led.recover(max_attempts=3)
        row = led.photo("a")
        assert row.state == "failed" and "stopped abruptly" in row.last_error
    finally:
        led.close()


# --- controller ----------------------------------------------------------------------------------


def test_controller_processes_arrivals_in_order_and_reports_status(make_controller, tmp_path):
    proc = SmallProcess(delay=0.2)
    c = make_controller(proc)
    root = tmp_path / "watch"
    paths = [write_photo(root / f"p{i}.jpg", i) for i in range(3)]
    for p in paths:
        c.arrived_file(p)
    s = wait_for(lambda: (st := c.status())["state"] == "working" and st)
    assert s["current"]["path"] == str(paths[0])
    wait_for(lambda: c.status()["counts"]["done"] == 3)
    assert proc.calls == paths
    assert all(output_path(p).is_file() for p in paths)
    s = c.status()
    assert s["state"] == "idle" and s["queue"] == 0 and s["current"] is None


def test_controller_pause_holds_and_resume_releases(make_controller, tmp_path):
    proc = SmallProcess()
    c = make_controller(proc)
    c.pause()
    p = write_photo(tmp_path / "watch" / "held.jpg")
    c.arrived_file(p)
    wait_for(lambda: c.status()["queue"] == 1)
    time.sleep(0.5)
    s = c.status()
    assert s["state"] == "paused" and s["pause_reasons"] == ["user"] and proc.calls == []
    c.pause("quiet hours")
    c.resume()  # the user's pause is lifted, the rule still holds
    time.sleep(0.3)
    assert c.status()["pause_reasons"] == ["quiet hours"] and proc.calls == []
    c.resume("quiet hours")
    wait_for(lambda: c.status()["counts"]["done"] == 1)
    assert proc.calls == [p]


def test_controller_skips_same_content_and_redoes_changed_content(make_controller, tmp_path):
    proc = SmallProcess()
    c = make_controller(proc)
    root = tmp_path / "watch"
    a = write_photo(root / "a.jpg", 1)
    c.arrived_file(a)
    wait_for(lambda: c.status()["counts"]["done"] == 1)
    copy = root / "copy-of-a.jpg"
    copy.write_bytes(a.read_bytes())
    c.arrived_file(copy)
    time.sleep(0.4)
    assert proc.calls == [a] and not output_path(copy).exists()
    a.write_bytes(jpeg_bytes(2))  # the photo itself changed
    c.arrived_file(a)
    wait_for(lambda: c.status()["counts"]["done"] == 2)
    assert proc.calls == [a, a]


def test_failed_photo_is_retried_with_backoff_then_left_failed_with_its_reason(make_controller, tmp_path):
    proc = SmallProcess()
    c = make_controller(proc, max_attempts=2, backoff_seconds=0.3)
    bad = tmp_path / "watch" / "bad.jpg"
    bad.write_bytes(b"not a photo at all")
    good = write_photo(tmp_path / "watch" / "good.jpg")
    c.arrived_file(bad)
    c.arrived_file(good)
    wait_for(lambda: c.status()["counts"]["done"] == 1)  # the daemon kept going after the bad file
    s = wait_for(lambda: (st := c.status())["last_failures"] and st["last_failures"][0]["attempts"] == 2 and st)
    time.sleep(0.8)  # no third attempt
    assert proc.calls.count(bad) == 2
    assert s["counts"]["failed"] == 1
    assert "cannot decode" in s["last_failures"][0]["reason"] and s["last_failures"][0]["path"] == str(bad)


class WeakProcess(SmallProcess):
    """Reports every photo weak (its copy missed a goal within the budget) and writes nothing, as
    the real processor does after its one retry; counts its calls."""

    def __call__(self, src: Path, *, should_stop, progress) -> ReportEntry:
        self.calls.append(src)
        return ReportEntry(input=str(src), output=None, status="weak", weak=True,
                           reason="face 1 not protected against face (distance 0.40 of goal 1.00)")


def test_weak_photo_is_recorded_weak_shown_in_status_and_not_retried(make_controller, tmp_path):
    from ghostmesh_daemon.cli.control import format_status
    from ghostmesh_daemon.daemon.tray import status_line

    proc = WeakProcess()
    c = make_controller(proc, max_attempts=3, backoff_seconds=0.2)
    weak = write_photo(tmp_path / "watch" / "weak.jpg", 1)
    summaries: list[dict] = []
    c.add_listener(summaries.append)
    c.arrived_file(weak)
    s = wait_for(lambda: (st := c.status())["counts"]["weak"] == 1 and st["current"] is None and st)
    time.sleep(0.8)  # well past the backoff: a weak photo is final, like a done one
    assert proc.calls == [weak] and not output_path(weak).exists()
    (row,) = ledger_rows(tmp_path / "ledger.sqlite3")
    assert row == (str(weak), "weak", 1, "face 1 not protected against face (distance 0.40 of goal 1.00)", None)
    assert s["counts"]["done"] == 0 and s["counts"]["failed"] == 0 and s["weak"] == 1
    (last,) = s["last_failures"]
    assert last["state"] == "weak" and last["path"] == str(weak) and "not protected against face" in last["reason"]
    assert s["state"] == "error" and s["last_problem"] == "weak"
    text = format_status(s)
    assert "0 protected, 1 weak (not protected), 0 failed" in text
    assert f"weak:     {weak}: face 1 not protected against face (distance 0.40 of goal 1.00)" in text
    assert status_line(summaries[-1]) == "Last photo was not protected (weak): 0 protected, 1 weak (not protected), 0 waiting"

    # The same content again (a rescan, a copy): not redone. A changed file is a new photo.
    copy = tmp_path / "watch" / "copy.jpg"
    copy.write_bytes(weak.read_bytes())
    c.arrived_file(copy)
    time.sleep(0.4)
    assert proc.calls == [weak]
    weak.write_bytes(jpeg_bytes(5))
    c.arrived_file(weak)
    wait_for(lambda: c.status()["counts"]["weak"] == 2)
    assert proc.calls == [weak, weak]


def test_ledger_schema_1_is_migrated_keeping_every_row(tmp_path):
    db = tmp_path / "old.sqlite3"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE photos (hash TEXT PRIMARY KEY, path TEXT NOT NULL, size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'processing', 'done', 'failed', 'skipped')),
            attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, output TEXT, engine_version TEXT, report TEXT,
            queued_at REAL NOT NULL, next_attempt REAL, created REAL NOT NULL, updated REAL NOT NULL);
        CREATE INDEX photos_queue ON photos (state, queued_at);
        CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, hash TEXT NOT NULL);
        INSERT INTO photos VALUES ('h1', '/x/a.jpg', 10, 1, 'done', 1, NULL, '/x/a.ghost.jpg', '1', NULL, 1, NULL, 1, 1);
        INSERT INTO photos VALUES ('h2', '/x/b.jpg', 10, 1, 'pending', 0, NULL, NULL, NULL, NULL, 2, NULL, 2, 2);
        INSERT INTO files VALUES ('/x/a.jpg', 10, 1, 'h1');
        PRAGMA user_version = 1;
    """)
    con.close()
    led = Ledger(db)
    try:
        assert led._db.execute("PRAGMA user_version").fetchone()[0] == 2
        assert led.photo("h1").state == "done" and led.photo("h1").output == "/x/a.ghost.jpg"
        assert led.known_hash("/x/a.jpg", 10, 1) == "h1"
        led.mark_processing("h2")
        led.mark_weak("h2", None, "1", "face 1 not protected against face")
        assert led.photo("h2").state == "weak" and led.counts()["weak"] == 1
        assert led.recent_failures()[0]["state"] == "weak"
        assert led.next_pending() is None
    finally:
        led.close()
    Ledger(db).close()  # opening it again changes nothing


def test_stop_abandons_the_current_photo_cleanly_and_it_is_redone_later(make_controller, tmp_path):
    slow = SmallProcess(delay=30, steps=300)
    c = make_controller(slow)
    p = write_photo(tmp_path / "watch" / "long.jpg")
    c.arrived_file(p)
    assert slow.started.wait(5)
    t0 = time.monotonic()
    c.stop()
    assert c.join(5)
    assert time.monotonic() - t0 < 2.0
    assert not output_path(p).exists()
    assert not [f for f in p.parent.iterdir() if f.name.startswith(".")], "a temporary was left"
    (row,) = ledger_rows(tmp_path / "ledger.sqlite3")
    assert row[1] == "pending" and row[2] == 0  # an abandoned attempt is not held against the photo
    fast = SmallProcess()
    c2 = make_controller(fast)
    wait_for(lambda: c2.status()["counts"]["done"] == 1)
    assert fast.calls == [p]


def test_rescan_requests_merge_and_find_what_was_missed(make_controller, tmp_path, caplog):
    root = tmp_path / "watch"
    for i in range(20):
        write_photo(root / f"d{i % 3}" / f"p{i}.jpg", i)
    old = time.time() - 60
    for f in root.rglob("*.jpg"):
        os.utime(f, (old, old))
    with caplog.at_level(logging.INFO, logger="ghostmesh"):
        c = make_controller(SmallProcess())
        for _ in range(10):
            c.rescan()
        wait_for(lambda: c.status()["counts"]["done"] == 20, timeout=20)
        wait_for(lambda: not c.status()["scanning"])
    scans = [r for r in caplog.records if r.getMessage().startswith("scanned")]
    assert 1 <= len(scans) <= 2, [r.getMessage() for r in scans]
    # an unchanged folder costs no reads the second time: every file is known by path, size and mtime
    results = list(scan(root, Matcher()))
    assert len(results) == 20 + 0  # outputs are not scanned
    assert c.ask(Found(results)) == []


def test_maintenance_forgets_deleted_paths(make_controller, tmp_path):
    c = make_controller(SmallProcess())
    p = write_photo(tmp_path / "watch" / "gone.jpg")
    c.arrived_file(p)
    wait_for(lambda: c.status()["counts"]["done"] == 1)
    p.unlink()
    assert c.ask(Maintain()) == {"forgotten_paths": 1}


# --- control channel, lock, scheduler, power -----------------------------------------------------


def test_control_socket_is_private_and_answers(make_controller, tmp_path):
    c = make_controller(SmallProcess())
    sock = tmp_path / "run" / "control.sock"
    server = ControlServer(sock, lambda cmd: {"status": c.status()})
    server.start()
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        reply = request(sock, "status")
        assert reply["ok"] and reply["status"]["state"] == "idle"
        bad = request(sock, "format-disk")
        assert not bad["ok"] and "unknown command" in bad["error"]
    finally:
        server.stop()
    assert not sock.exists()
    with pytest.raises(ControlUnavailable, match="no daemon is running"):
        request(sock, "status")


def test_second_instance_lock_is_refused_with_the_holders_pid(tmp_path):
    first = InstanceLock(tmp_path / "daemon.lock")
    first.acquire()
    try:
        with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
            InstanceLock(tmp_path / "daemon.lock").acquire()
    finally:
        first.release()
    with InstanceLock(tmp_path / "daemon.lock"):  # free again once released
        pass


def test_quiet_hours_window_crosses_midnight():
    import datetime as dt

    t = dt.time
    assert in_window(t(23, 0), t(22, 0), t(7, 0)) and in_window(t(6, 59), t(22, 0), t(7, 0))
    assert not in_window(t(7, 0), t(22, 0), t(7, 0)) and not in_window(t(12, 0), t(22, 0), t(7, 0))
    assert in_window(t(13, 0), t(12, 0), t(14, 0)) and not in_window(t(14, 0), t(12, 0), t(14, 0))


def test_scheduler_jobs_coalesce_and_apply_the_rules_at_start(make_controller):
    import datetime as dt

    c = make_controller(SmallProcess())
    now = dt.datetime.now()
    quiet = ((now - dt.timedelta(minutes=5)).time(), (now + dt.timedelta(minutes=5)).time())
    sched = Scheduler(c, rescan_minutes=30, quiet_hours=quiet, only_on_ac_power=True, battery=lambda: True)
    sched.start()
    try:
        assert sched.job_ids() == ["maintenance", "power", "quiet-end", "quiet-start", "rescan"]
        for job in sched._sched.get_jobs():
            assert job.coalesce and job.max_instances == 1
        wait_for(lambda: c.status()["pause_reasons"] == ["on battery", "quiet hours"])
    finally:
        sched.stop()


def test_power_state_is_read_from_sysfs(tmp_path):
    def supply(name, **files):
        (tmp_path / name).mkdir()
        for k, v in files.items():
            (tmp_path / name / k).write_text(v + "\n")

    supply("AC", type="Mains", online="0")
    supply("BAT0", type="Battery", status="Discharging")
    assert on_battery(tmp_path) is True
    (tmp_path / "AC" / "online").write_text("1\n")
    assert on_battery(tmp_path) is False
    assert on_battery(tmp_path / "missing") in (None, True, False)  # falls back to psutil or "unknown"


def test_content_hash_is_of_the_bytes(tmp_path):
    a = write_photo(tmp_path / "a.jpg", 1)
    b = tmp_path / "b.jpg"
    b.write_bytes(a.read_bytes())
    assert content_hash(a) == content_hash(b) != content_hash(write_photo(tmp_path / "c.jpg", 2))


def test_control_commands_without_a_daemon_say_so_and_exit_1(tmp_path, monkeypatch):
    from ghostmesh_daemon.cli import main
    from ghostmesh_daemon.cli.env import Env

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    for cmd in ("status", "pause", "resume"):
        out, err = io.StringIO(), io.StringIO()
        assert main([cmd], Env(stdout=out, stderr=err)) == 1
        assert err.getvalue().startswith(f"ghostmesh {cmd}: no daemon is running (nothing answers at {tmp_path}")
