"""``ghostmesh backfill``: batch mode on a real local Ray cluster (loopback only), real models, real photos.

One Ray instance serves the whole module (start-up costs seconds); every run connects to it, the
in-process ones through ``ray.is_initialized()``, the subprocess one through ``--cluster ADDRESS``.
The engine runs one step on small copies of the shared faces (``--keep-weak`` so the copies are
written): these tests are about the batch machinery, not the protection.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from ghostmesh_daemon.batch.driver import EARLIER_NOTE, write_report_stream
from ghostmesh_daemon.batch.ledger import BatchLedger
from ghostmesh_daemon.cli.env import ExitStatus
from ghostmesh_daemon.report import ReportEntry, write_report

from conftest import ROOT, run_cli, sha, shared_data

CHEAP = ["--steps", "1", "--targets", "face", "--keep-weak"]
FACES = {"obama.jpg": ("obama", "obama.jpg"), "biden.jpg": ("biden", "biden.jpg"),
         "sub/rose.jpg": ("rose_leslie", "img1.jpg")}


# --- without Ray ----------------------------------------------------------------------------------

def test_core_package_does_not_import_ray():
    code = ("import sys, ghostmesh_daemon, ghostmesh_daemon.cli, ghostmesh_daemon.batch, ghostmesh_daemon.pipeline; "
            "ghostmesh_daemon.cli.build_parser(); assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_without_ray_backfill_says_which_extra_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does when it is not installed
    code, _, err = run_cli("backfill", str(tmp_path), "--ledger", str(tmp_path / "l.sqlite3"))
    assert code == ExitStatus.USAGE and "ghostmesh[cluster]" in err


def test_streamed_report_is_the_same_json_as_write_report(tmp_path):
    entries = [ReportEntry.failed("a.jpg", "not a photo"), ReportEntry.skipped("b.jpg", "no face found")]
    write_report(entries, tmp_path / "a.json")
    write_report_stream((e.to_dict() for e in entries), tmp_path / "b.json")
    write_report([], tmp_path / "c.json")
    write_report_stream([], tmp_path / "d.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "c.json").read_bytes() == (tmp_path / "d.json").read_bytes()


def test_ledger_recovers_interrupted_photos_and_bounds_attempts(tmp_path):
    ledger = BatchLedger(tmp_path / "l.sqlite3")
    run = ledger.start_run()
    for name in "ab":
        ledger.arrive(run, f"/p/{name}.jpg", f"/p/{name}.ghost.jpg", 1, 1, name * 64)
        ledger.mark_processing(name * 64, f"/p/{name}.ghost.jpg")
    ledger.mark_processing("b" * 64, "/p/b.ghost.jpg")  # b: its second attempt was cut short too
    assert ledger.recover(max_attempts=2) == 2
    a, b = ledger.row("a" * 64, "/p/a.ghost.jpg"), ledger.row("b" * 64, "/p/b.ghost.jpg")
    assert (a.state, a.attempts, a.interrupted) == ("pending", 1, True)
    assert b.state == "failed" and "stopped abruptly" in b.last_error
    # Same content elsewhere is another photo (its copy belongs beside it); same place, same row.
    assert ledger.arrive(run, "/q/a.jpg", "/q/a.ghost.jpg", 1, 1, "a" * 64).state == "pending"
    assert ledger.arrive(run, "/p/a.jpg", "/p/a.ghost.jpg", 1, 1, "a" * 64).attempts == 1
    ledger.close()


# --- with Ray -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_address():
    ray = pytest.importorskip("ray")
    # On loopback only (conftest sets Ray's switch for that before ray is imported).
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                       object_store_memory=150 * 1024 * 1024)
    assert context.address_info["address"].startswith("127.0.0.1:"), context.address_info["address"]
    yield context.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def small_faces(tmp_path_factory) -> dict[str, bytes]:
    """Small JPEG copies of three shared faces (a real face for dlib, a second of work per step)."""
    out = {}
    for name, (person, file) in FACES.items():
        im = Image.open(shared_data("faces", person, file))
        im.thumbnail((240, 240))
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "JPEG", quality=90)
        out[name] = buf.getvalue()
    return out


def make_library(root: Path, faces: dict[str, bytes], *, extras: bool = False) -> Path:
    lib = root / "library"
    for name, data in faces.items():
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        (lib / name).write_bytes(data)
    if extras:
        Image.new("RGB", (120, 90), (90, 140, 200)).save(lib / "sky.jpg", quality=90)
        (lib / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return lib


def hashes(lib: Path) -> dict[str, str]:
    return {str(p.relative_to(lib)): sha(p) for p in sorted(lib.rglob("*")) if p.is_file() and ".ghost." not in p.name}


def outputs(lib: Path) -> list[Path]:
    return sorted(p for p in lib.rglob("*.ghost.*"))


def assert_no_temporaries(lib: Path) -> None:
    assert not [p for p in lib.rglob("*") if ".ghosttmp-" in p.name]


def assert_decodes_completely(original: Path, protected: Path) -> None:
    with Image.open(protected) as im:
        im.load()  # raises on a truncated file
        with Image.open(original) as o:
            assert im.size == o.size and im.format == o.format


def test_backfill_protects_a_library_and_a_second_run_redoes_nothing(ray_address, small_faces, tmp_path):
    lib = make_library(tmp_path, small_faces, extras=True)
    before = hashes(lib)
    ledger, report = tmp_path / "ledger.sqlite3", tmp_path / "report.json"
    code, out, err = run_cli("backfill", str(lib), "--cluster", ray_address, "--workers", "2", "--ledger", str(ledger),
                             "--report", str(report), "--max-attempts", "1", *CHEAP)
    assert code == ExitStatus.ERROR, err  # one step: weak (kept); and a broken file
    entries = {Path(e["input"]).relative_to(lib).as_posix(): e for e in json.loads(report.read_text())}
    assert sorted(entries) == sorted([*FACES, "sky.jpg", "broken.jpg"])
    assert set(entries["obama.jpg"]) == set(ReportEntry.__dataclass_fields__)  # protect --report's fields
    for name in FACES:
        e = entries[name]
        assert e["status"] == "weak" and e["faces"] == 1 and e["output"] == str(lib / name).replace(".jpg", ".ghost.jpg")
        assert_decodes_completely(lib / name, Path(e["output"]))
    assert entries["sky.jpg"]["status"] == "skipped" and entries["sky.jpg"]["output"] is None
    assert entries["broken.jpg"]["status"] == "failed" and f"{lib / 'broken.jpg'}: failed:" in err
    assert [p.name for p in outputs(lib)] == ["biden.ghost.jpg", "obama.ghost.jpg", "rose.ghost.jpg"]
    assert hashes(lib) == before  # originals untouched
    assert_no_temporaries(lib)
    assert "3 weak, 1 failed, 1 skipped (0 of them finished in earlier runs); 5 processed" in out

    stamps = {p: p.stat().st_mtime_ns for p in outputs(lib)}
    code, out, err = run_cli("backfill", str(lib), "--cluster", ray_address, "--ledger", str(ledger),
                             "--report", str(report), "--max-attempts", "1", *CHEAP)
    assert code == ExitStatus.ERROR and "(5 of them finished in earlier runs); 0 processed" in out, out + err
    again = json.loads(report.read_text())
    assert len(again) == 5 and all(e["notes"][-1] == EARLIER_NOTE or "not tried again" in e["notes"][-1] for e in again)
    assert {p: p.stat().st_mtime_ns for p in outputs(lib)} == stamps


def test_bytes_transfer_writes_the_copy_on_the_driver(ray_address, small_faces, tmp_path):
    lib = make_library(tmp_path, {"obama.jpg": small_faces["obama.jpg"]})
    report = tmp_path / "report.json"
    scratch_before = set(Path(tempfile.gettempdir()).glob("ghostmesh-batch-*"))
    code, out, err = run_cli("backfill", str(lib), "--cluster", ray_address, "--workers", "1", "--transfer", "bytes",
                             "--ledger", str(tmp_path / "l.sqlite3"), "--report", str(report), *CHEAP)
    [entry] = json.loads(report.read_text())
    assert entry["status"] == "weak" and entry["input"] == str(lib / "obama.jpg"), err
    assert entry["output"] == str(lib / "obama.ghost.jpg")
    assert "ghostmesh-batch-" not in report.read_text()  # no worker scratch path leaks into the report
    assert set(Path(tempfile.gettempdir()).glob("ghostmesh-batch-*")) <= scratch_before  # nor a folder in /tmp
    assert_decodes_completely(lib / "obama.jpg", lib / "obama.ghost.jpg")
    assert_no_temporaries(lib)


def _kill_first_worker_busy_on_protect(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first Ray worker process seen running ``BatchWorker.protect`` (its process title)."""
    while not stop.is_set() and not killed:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"ray::BatchWorker.protect"):
                time.sleep(0.5)  # well inside the photo's work
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                return
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker through /proc")
def test_a_worker_killed_mid_photo_is_replaced_and_every_photo_is_protected_once(ray_address, small_faces, tmp_path):
    faces = {k: small_faces[k] for k in ("obama.jpg", "biden.jpg")}
    lib = make_library(tmp_path, faces)
    before = hashes(lib)
    ledger_path, report = tmp_path / "l.sqlite3", tmp_path / "report.json"
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_worker_busy_on_protect, args=(stop, killed))
    killer.start()
    try:
        code, out, err = run_cli("backfill", str(lib), "--cluster", ray_address, "--workers", "1",
                                 "--ledger", str(ledger_path), "--report", str(report), *CHEAP)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was seen running protect"
    entries = json.loads(report.read_text())
    assert sorted(Path(e["input"]).name for e in entries) == sorted(faces)  # each photo once
    assert all(e["status"] == "weak" and e["output"] for e in entries), err
    restarted = [e for e in entries if any("worker died" in n for n in e["notes"])]
    assert len(restarted) == 1, entries
    assert [p.name for p in outputs(lib)] == ["biden.ghost.jpg", "obama.ghost.jpg"]
    for name in faces:
        assert_decodes_completely(lib / name, lib / name.replace(".jpg", ".ghost.jpg"))
    assert hashes(lib) == before
    assert_no_temporaries(lib)
    ledger = BatchLedger(ledger_path)
    assert ledger.counts()["weak"] == 2
    ledger.close()


def test_a_killed_driver_loses_nothing_and_the_next_run_does_only_the_rest(ray_address, small_faces, tmp_path):
    lib = make_library(tmp_path, small_faces)
    before = hashes(lib)
    ledger, report = tmp_path / "l.sqlite3", tmp_path / "report.json"
    argv = [sys.executable, "-m", "ghostmesh_daemon", "backfill", str(lib), "--cluster", ray_address, "--workers", "1",
            "--ledger", str(ledger), *CHEAP]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        first = ""
        while " -> " not in first:  # a photo's line comes after its ledger row is committed
            first = proc.stdout.readline()
            assert first or proc.poll() is None, "the driver ended before any photo landed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    landed = Path(first.split(" -> ")[1].split(":")[0])
    stamp = landed.stat().st_mtime_ns

    code, out, err = run_cli("backfill", str(lib), "--cluster", ray_address, "--workers", "1",
                             "--ledger", str(ledger), "--report", str(report), *CHEAP)
    entries = {Path(e["input"]).name: e for e in json.loads(report.read_text())}
    assert len(entries) == 3
    earlier = [n for n, e in entries.items() if e["notes"][-1] == EARLIER_NOTE]
    assert earlier and landed.name.replace(".ghost", "") in earlier  # nothing finished is done again
    assert landed.stat().st_mtime_ns == stamp
    assert all(e["status"] == "weak" and Path(e["output"]).exists() for e in entries.values()), out + err
    assert len(outputs(lib)) == 3
    assert hashes(lib) == before
    assert_no_temporaries(lib)


def test_a_worker_that_keeps_dying_fails_that_photo_by_name_and_a_fresh_worker_goes_on(ray_address, small_faces,
                                                                                       tmp_path):
    faces = {k: small_faces[k] for k in ("obama.jpg", "biden.jpg")}
    lib = make_library(tmp_path, faces)
    report = tmp_path / "report.json"
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_worker_busy_on_protect, args=(stop, killed))
    killer.start()
    try:  # no restarts: Ray gives up on the worker at once, the driver puts a new one in its place
        code, out, err = run_cli("backfill", str(lib), "--cluster", ray_address, "--workers", "1", "--worker-restarts",
                                 "0", "--ledger", str(tmp_path / "l.sqlite3"), "--report", str(report), *CHEAP)
    finally:
        stop.set()
        killer.join()
    assert killed and code == ExitStatus.ERROR
    entries = {Path(e["input"]).name: e for e in json.loads(report.read_text())}
    [dead] = [n for n, e in entries.items() if e["status"] == "failed"]
    assert "its worker died while processing it" in entries[dead]["reason"] and f"{lib / dead}: failed:" in err
    [alive] = [n for n in entries if n != dead]
    assert entries[alive]["status"] == "weak" and Path(entries[alive]["output"]).exists()
    assert not (lib / dead.replace(".jpg", ".ghost.jpg")).exists()
    assert_no_temporaries(lib)


def _bare_worker(node: str):
    """A BatchWorker without Ray or models: only its decision of how a job can be done."""
    from ghostmesh_daemon.batch.worker import BatchWorker

    w = object.__new__(BatchWorker)
    w.node, w.restarted, w.protector = node, False, None
    w._common = lambda: {}
    return w


def test_transfer_auto_asks_for_bytes_only_where_the_photo_is_not_the_same(tmp_path):
    from ghostmesh_daemon.batch.worker import Job
    from ghostmesh_daemon.daemon.readiness import content_hash

    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"photo")
    elsewhere = Job(src=str(tmp_path / "absent.jpg"), dest=str(tmp_path / "absent.ghost.jpg"), hash=content_hash(photo),
                    driver_node="driver", transfer="auto")
    assert _bare_worker("other")._shared(elsewhere).need_bytes
    forced = _bare_worker("other")._shared(Job(**{**elsewhere.__dict__, "transfer": "shared"}))
    assert not forced.need_bytes and forced.entry.status == "failed" and "not visible" in forced.entry.reason
    changed = Job(src=str(photo), dest=str(tmp_path / "a.ghost.jpg"), hash="0" * 64, driver_node="driver", transfer="auto")
    out = _bare_worker("driver")._shared(changed)
    assert not out.need_bytes and out.entry.status == "failed" and "changed since the run read it" in out.entry.reason
