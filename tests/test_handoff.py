"""Issue 13: SigLIP's availability decided without waiting on a network that is not there, and
`ghostmesh protect` (and both editor hooks, which run it) handing photos to a running daemon.

The hand-off tests share one real daemon (`ghostmesh run --targets face --device cpu`, its own XDG
folders, a real watched folder) and run the real CLI against it as a subprocess, the way an editor
does; the hooks run under lupa as in test_plugins_export.py.

The unreadable-file test: the suite runs as root, for whom `os.access` says yes to everything. The
client is therefore run with its capabilities CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped
(`capsh --drop=...`): the same uid (so the socket lets it in), but the kernel refuses it a mode-000
file, as it would a sandboxed editor of the user's own. The daemon, which can read the file, must
refuse too: it checks the requesting process's credentials (SO_PEERCRED pid -> /proc/<pid>/status),
not its own.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import test_daemon_process as dp
from ghostmesh_daemon import hub

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--targets", "face", "--device", "cpu", "--steps", "1"]
HANDED = "protected by the running daemon"


# --- offline decision: no network wait -------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Every way out to the hub raises and is counted; the state folder is a fresh one."""
    calls: list[str] = []

    def refuse(*args, **kwargs):
        calls.append(repr(args[:2]))
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(hub.urllib.request, "urlopen", refuse)
    import requests

    monkeypatch.setattr(requests.Session, "request", lambda self, *a, **k: refuse(*a))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return calls


def test_offline_mode_decides_at_once_without_a_request(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    d = hub.decide("google/siglip-base-patch16-384")
    assert time.perf_counter() - t0 < 0.5
    assert not d.usable and d.source == "offline" and "HF_HUB_OFFLINE" in d.reason and not d.probed
    assert no_network == []


def test_unreachable_hub_is_probed_once_then_remembered(no_network):
    t0 = time.perf_counter()
    first = hub.decide("google/siglip-base-patch16-384")
    assert not first.usable and first.source == "unreachable" and first.probed
    assert len(no_network) == 1  # one attempt, no retries
    second = hub.decide("google/siglip-base-patch16-384")
    assert not second.usable and second.source == "remembered" and not second.probed
    assert len(no_network) == 1  # remembered: not asked again
    assert time.perf_counter() - t0 < 1.0
    record = json.loads(hub.probe_file().read_text())
    assert record["ok"] is False and hub.probe_file().is_relative_to(Path(os.environ["XDG_STATE_HOME"]))
    # a day later it is asked again
    record["at"] -= hub.PROBE_INTERVAL + 1
    hub.probe_file().write_text(json.dumps(record))
    assert hub.decide("google/siglip-base-patch16-384").probed and len(no_network) == 2


def test_a_cached_model_is_used_without_a_request(no_network, tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").write_bytes(b"x")
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    d = hub.decide("org/tiny")
    assert d.usable and d.source == "cache" and no_network == []


def test_a_reachable_hub_means_one_line_and_the_download_once(tmp_path, monkeypatch):
    """With the network (a local stand-in for the hub's endpoint), SigLIP not cached: the decision is
    to download, said in one line before it starts."""
    import http.server
    import threading

    from ghostmesh_daemon.pipeline import _check_hub_model

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        said: list[str] = []
        decision = _check_hub_model("org/not-cached", said.append)
        assert decision.download and decision.probed
        (line,) = said
        assert "not on this machine yet: downloading it once" in line and "\n" not in line
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_auto_without_siglip_warns_loudly_and_named_siglip_is_an_error(no_network):
    """The pipeline's own path (load_targets): `auto` goes on with a recorded warning, a named
    siglip is an error, and neither touches the network (the failure is remembered)."""
    import torch

    from ghostmesh_daemon.engine.settings import settings_for
    from ghostmesh_daemon.errors import ModelUnavailable
    from ghostmesh_daemon.pipeline import load_targets

    hub._remember(False, "gaierror: test")
    t0 = time.perf_counter()
    warned: list[str] = []
    targets, warnings = load_targets(settings_for("stealth"), torch.device("cpu"), warned.append)
    assert "siglip" not in [t.name for t in targets] and {"face", "mobileface"} <= {t.name for t in targets}
    assert any("siglip" in w and "unreachable" in w for w in warnings) and warned == warnings
    with pytest.raises(ModelUnavailable, match="siglip"):
        load_targets(settings_for("stealth", targets=("siglip",)), torch.device("cpu"), warned.append)
    assert time.perf_counter() - t0 < 5.0 and no_network == []


def test_models_command_shows_the_decision(no_network, monkeypatch):
    import io

    from ghostmesh_daemon.cli import main
    from ghostmesh_daemon.cli.env import Env

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = io.StringIO()
    assert main(["models"], Env(stdout=out, stderr=io.StringIO())) == 0
    text = out.getvalue()
    assert "siglip        MISSING" in text and "HF_HUB_OFFLINE is set" in text
    assert "siglip        decided by offline mode (no network request)" in text and no_network == []


# --- the hand-off, with a real daemon -----------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    if not dp.SOURCES:
        pytest.skip("test photos not found (../shared/data)")
    tmp = tmp_path_factory.mktemp("handoff")
    watch = tmp / "watched"
    watch.mkdir()
    d = dp.Daemon(tmp, watch, "--targets", "face", "--no-tray", steps=1).start()
    d.env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    yield d
    d.terminate()


def photo(folder: Path, name: str, n: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_bytes(dp.photo_bytes(n, side=200))
    return p


def cli(d, *args: str, cwd: Path | None = None, prefix: tuple[str, ...] = (), umask: int | None = None):
    argv = [*dp.CLI, *args]
    if prefix:
        argv = [*prefix, " ".join(map(_sh, argv))]
    return subprocess.run(argv, env=d.env, capture_output=True, text=True, timeout=120, cwd=cwd,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def _sh(word: str) -> str:
    import shlex

    return shlex.quote(word)


def test_cli_hands_off_and_gets_the_same_entry_and_exit_code(daemon, tmp_path):
    work = tmp_path / "my photos"
    src = photo(work, "IMG 1.jpg")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    t0 = time.monotonic()
    r = cli(daemon, "protect", *FAST, "--keep-weak", "--strip-gps", "--report", "r.json", "--out-dir", str(out_dir),
            "IMG 1.jpg", "missing.jpg", cwd=work, umask=0o077)
    took = time.monotonic() - t0
    assert r.returncode == 1, r.stderr  # one step: weak (kept); and a missing file
    entries = json.loads((work / "r.json").read_text())
    assert [e["input"] for e in entries] == ["IMG 1.jpg", "missing.jpg"]  # as given, in order
    e, missing = entries
    assert e["status"] == "weak" and e["output"] == str(out_dir / "IMG 1.ghost.jpg") and e["steps"] == 1
    assert e["targets"] == ["face"] and e["device"] == "cpu" and any(HANDED in n for n in e["notes"])
    assert missing["status"] == "failed" and missing["reason"] == "no such file"
    out = out_dir / "IMG 1.ghost.jpg"
    assert out.is_file() and oct(out.stat().st_mode & 0o777) == oct(0o600)  # the caller's umask
    assert "IMG 1.jpg -> " in r.stderr and "weak (kept at your request)" in r.stderr
    assert "hand-off" in daemon.log.read_text()
    assert took < 30, took

    # --in-place without --keep-weak: the weak copy is not written, the file stays as it was
    before = src.read_bytes()
    r = cli(daemon, "protect", *FAST, "--in-place", str(src))
    assert r.returncode == 1 and "(left unchanged; --keep-weak replaces it anyway)" in r.stderr
    assert src.read_bytes() == before and sorted(p.name for p in work.iterdir()) == ["IMG 1.jpg", "r.json"]


def test_request_the_daemon_cannot_honour_is_refused_and_run_here(daemon, tmp_path):
    """Other targets: the daemon refuses at once, naming why; the CLI says so and runs it itself
    (here a broken file, so the local run is short)."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    r = cli(daemon, "protect", "--targets", "face,mobileface", "--device", "cpu", "--steps", "1", str(broken))
    assert r.returncode == 1
    assert "the running daemon cannot take this run (it has the targets face loaded; this run asks for " \
           "face,mobileface); protecting here instead" in r.stderr, r.stderr
    assert f"{broken}: failed: not an image" in r.stderr


def test_paused_daemon_runs_a_handoff_ahead_of_its_held_backlog(daemon, tmp_path):
    assert daemon.cli("pause").returncode == 0
    try:
        backlog = photo(daemon.watch, "backlog.jpg", 3)
        daemon.wait(lambda s: s["queue"] >= 1, 30, "the backlog photo queued")
        src = photo(tmp_path, "export.jpg", 1)
        r = cli(daemon, "protect", *FAST, "--keep-weak", str(src))
        assert r.returncode == 1, r.stderr
        assert (tmp_path / "export.ghost.jpg").is_file()
        s = daemon.status()
        assert s["paused"] and s["queue"] >= 1 and not dp.output_path(backlog).exists()  # still held
    finally:
        assert daemon.cli("resume").returncode == 0
    daemon.wait(lambda s: dp.finished(s) >= 1 and s["current"] is None, 60, "the backlog done after resume")


def test_no_daemon_or_a_stale_socket_runs_here(daemon, tmp_path):
    env = dict(daemon.env)
    run_dir = tmp_path / "run"
    (run_dir / "ghostmesh").mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(run_dir / "ghostmesh" / "control.sock"))  # bound, never listening: a crashed daemon's
    stale.close()
    env["XDG_RUNTIME_DIR"] = str(run_dir)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    r = subprocess.run([*dp.CLI, "protect", *FAST, "--report", str(tmp_path / "r.json"), str(broken)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "running daemon" not in r.stderr, r.stderr
    (e,) = json.loads((tmp_path / "r.json").read_text())
    assert e["status"] == "failed" and not any(HANDED in n for n in e["notes"])


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("capsh"), reason="needs root and capsh to drop DAC caps")
def test_a_file_the_caller_cannot_read_is_refused(daemon, tmp_path):
    secret = photo(tmp_path, "secret.jpg", 2)
    secret.chmod(0)
    readable = photo(tmp_path, "mine.jpg", 4)
    drop = ("capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c")
    r = cli(daemon, "protect", *FAST, "--keep-weak", "--report", str(tmp_path / "r.json"), str(secret), str(readable),
            prefix=drop)
    assert r.returncode == 1, r.stderr
    e_secret, e_mine = json.loads((tmp_path / "r.json").read_text())
    assert e_secret["status"] == "failed", e_secret
    assert e_secret["reason"] == f"permission denied: the requesting process may not read {secret}"
    assert not (tmp_path / "secret.ghost.jpg").exists()
    # the same caller's readable photo was done by the daemon (the refusal is about the file)
    assert e_mine["status"] == "weak" and any(HANDED in n for n in e_mine["notes"])
    assert "refused" in daemon.log.read_text()


def test_both_editor_hooks_hand_off(daemon, tmp_path):
    pe = pytest.importorskip("test_plugins_export")
    exe = tmp_path / "bin" / "ghostmesh"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'from ghostmesh_daemon.cli import entry_point; "
                   "entry_point()' \"$@\"\n")
    exe.chmod(0o755)
    folder = tmp_path / "Exports d'été"
    folder.mkdir()

    exported = pe.make_export(folder, "dt é.jpg")
    before = pe.pixels(exported), pe.exif_of(exported)
    report = tmp_path / "dt.json"
    dt = pe.load_darktable(tmp_path, {"executable": str(exe), "targets": "face",
                                      "extra_args": f"--steps 1 --device cpu --keep-weak --report {report}"},
                           host=pe.Host(env=dict(daemon.env)))
    assert dt.export(exported) == 1
    assert dt.host.of("print_error") == [], dt.host.calls
    (e,) = json.loads(report.read_text())
    assert e["output"] == str(exported) and any(HANDED in n for n in e["notes"])
    pe.assert_protected(exported, *before)

    rendition = pe.make_export(folder, "lr ü.jpg")
    before = pe.pixels(rendition), pe.exif_of(rendition)
    report = tmp_path / "lr.json"
    lr = pe.load_lightroom(tmp_path)
    lr.host.env = dict(daemon.env)
    lr.export(pe.lr_properties(exe, ghostmesh_extra_args=f"--steps 1 --device cpu --keep-weak --report {report}"),
              [(rendition, True, None)])
    assert lr.host.of("renditionIsDone") == []
    (e,) = json.loads(report.read_text())
    assert e["output"] == str(rendition) and any(HANDED in n for n in e["notes"])
    pe.assert_protected(rendition, *before)


def test_controller_runs_handoffs_before_the_backlog(tmp_path):
    """Unit level (the real controller, a small real process): a hand-off waits only for the photo
    in progress, then goes before the rest of the backlog."""
    import test_daemon as td

    from ghostmesh_daemon.daemon.controller import Controller, ControllerOptions, HandoffJob, SubmitHandoff
    from ghostmesh_daemon.daemon.matcher import Matcher

    root = tmp_path / "watch"
    proc = td.SmallProcess(delay=0.3)
    order: list[str] = []
    c = Controller(tmp_path / "ledger.sqlite3", lambda src, **kw: (order.append(src.name), proc(src, **kw))[1],
                   ControllerOptions(roots=[root], matcher=Matcher(), settle_seconds=0.2))
    c.start()
    try:
        backlog = [td.write_photo(root / f"p{i}.jpg", i) for i in range(3)]
        for p in backlog:
            c.arrived_file(p)
        td.wait_for(lambda: c.status()["state"] == "working")
        mine = td.write_photo(tmp_path / "export.jpg", 9)
        job = HandoffJob(str(mine), lambda **kw: (order.append("export.jpg"), proc(mine, **kw))[1])
        assert c.ask(SubmitHandoff([job])) == 1  # the photo in progress is ahead of it
        assert job.future.result(10).status == "ok"
        td.wait_for(lambda: c.status()["counts"]["done"] == 3)
        assert order == ["p0.jpg", "export.jpg", "p1.jpg", "p2.jpg"]
        assert c.status()["handoffs"] == 0
    finally:
        c.stop()
        assert c.join(10)
