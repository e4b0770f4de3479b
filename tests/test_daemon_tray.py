"""The tray, with pystray's real X11 backend on a real (virtual) X server, and the headless fallback.

Under Xvfb there is no desktop, so the test process plays the part a panel plays: it owns the
``_NET_SYSTEM_TRAY_S0`` selection (the freedesktop system-tray protocol), receives the icon's dock
request, reads the icon window's title and sends it a click. Everything on the daemon side is real.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ghostmesh_daemon.daemon.controller import Controller, ControllerOptions
from ghostmesh_daemon.daemon.matcher import Matcher
from ghostmesh_daemon.daemon.tray import Tray, icon_image, status_line
from ghostmesh_daemon.report import ReportEntry


@pytest.fixture(autouse=True)
def no_thread_leaks():
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"threads leaked: {[t.name for t in leaked]}"


def wait_for(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def _ok(src: Path, *, should_stop, progress) -> ReportEntry:
    return ReportEntry(input=str(src), output=None, status="ok")


@pytest.fixture
def controller(tmp_path):
    c = Controller(tmp_path / "ledger.sqlite3", _ok, ControllerOptions(roots=[tmp_path], matcher=Matcher()))
    c.start()
    yield c
    c.stop()
    assert c.join(10)


def start_xvfb() -> tuple[subprocess.Popen, str]:
    """A private X server; its display number comes back through -displayfd (no guessing)."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("Xvfb is not installed (tests/system-deps.sh installs it when run as root)")
    r, w = os.pipe()
    proc = subprocess.Popen([xvfb, "-displayfd", str(w), "-screen", "0", "320x240x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        number = f.readline().strip()
    if not number:
        proc.kill()
        proc.wait()
        pytest.skip("Xvfb did not start")
    return proc, f":{number}"


@pytest.fixture
def xvfb():
    proc, display = start_xvfb()
    yield display
    proc.terminate()
    proc.wait(10)


class TrayHost:
    """The panel side of the freedesktop system-tray protocol, as a real X client."""

    REQUEST_DOCK = 0

    def __init__(self, display: str) -> None:
        import Xlib.display
        from Xlib import X

        self.X = X
        self.d = Xlib.display.Display(display)
        screen = self.d.screen()
        self.window = screen.root.create_window(0, 0, 1, 1, 0, screen.root_depth)
        selection = self.d.intern_atom(f"_NET_SYSTEM_TRAY_S{self.d.get_default_screen()}")
        self.window.set_selection_owner(selection, X.CurrentTime)
        self.opcode = self.d.intern_atom("_NET_SYSTEM_TRAY_OPCODE")
        self.d.sync()

    def wait_for_dock(self, timeout: float = 15.0) -> int:
        """The id of the first window that asks to be docked."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while self.d.pending_events():
                ev = self.d.next_event()
                if ev.type == self.X.ClientMessage and ev.client_type == self.opcode:
                    _, data = ev.data
                    if data[1] == self.REQUEST_DOCK:
                        return data[2]
            time.sleep(0.05)
        raise AssertionError("no icon asked to be docked")

    def title(self, wid: int) -> str:
        name = self.d.create_resource_object("window", wid).get_wm_name()
        return name.decode() if isinstance(name, bytes) else (name or "")

    def click(self, wid: int) -> None:
        """A left click on the icon, delivered to the client that owns the window."""
        from Xlib.protocol import event

        win = self.d.create_resource_object("window", wid)
        press = event.ButtonPress(
            time=self.X.CurrentTime, root=self.d.screen().root, window=win, same_screen=1, child=self.X.NONE,
            root_x=0, root_y=0, event_x=1, event_y=1, state=0, detail=1,
        )
        win.send_event(press, event_mask=self.X.NoEventMask)
        self.d.flush()

    def close(self) -> None:
        self.d.close()


def test_headless_fallback_without_a_display_says_so_once(controller, monkeypatch, caplog):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with caplog.at_level(logging.INFO, logger="ghostmesh"):
        tray = Tray.create(controller, protected_folder=Path("."), log_file=Path("x.log"), on_quit=lambda: None)
    assert tray is None
    lines = [r.getMessage() for r in caplog.records if "headless" in r.getMessage()]
    assert lines == ["running headless: no display (DISPLAY and WAYLAND_DISPLAY are unset)"]


def test_headless_fallback_when_the_display_cannot_be_reached(controller, monkeypatch, caplog, tmp_path):
    # A display name that points nowhere: pystray's X backend fails to connect; the daemon goes on.
    monkeypatch.setenv("DISPLAY", ":987")
    monkeypatch.setenv("PYSTRAY_BACKEND", "xorg")
    code = (
        "import logging, sys; from pathlib import Path;"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s');"
        "from ghostmesh_daemon.daemon.tray import Tray;"
        "print('tray:', Tray.create(None, protected_folder=Path('.'), log_file=Path('x'), on_quit=print))"
    )
    out = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "running headless: no tray backend" in out.stdout and "tray: None" in out.stdout


def test_tray_under_xvfb_docks_shows_state_and_drives_the_controller(controller, xvfb, monkeypatch, tmp_path):
    monkeypatch.setenv("DISPLAY", xvfb)
    monkeypatch.setenv("PYSTRAY_BACKEND", "xorg")
    host = TrayHost(xvfb)
    opened: list[Path] = []
    quit_asked = threading.Event()
    tray = Tray.create(controller, protected_folder=tmp_path, log_file=tmp_path / "ghostmesh.log",
                       on_quit=quit_asked.set, opener=opened.append)
    assert tray is not None, "no tray under Xvfb"
    assert type(tray.icon).__module__ == "pystray._xorg"
    runner = threading.Thread(target=tray.run, name="test-tray")
    runner.start()
    try:
        wid = host.wait_for_dock()
        controller.rescan()  # any command makes the controller publish its summary
        wait_for(lambda: host.title(wid).startswith("Ghost Mesh: Idle"))

        host.click(wid)  # the default item: Paused
        wait_for(lambda: controller.status()["pause_reasons"] == ["user"])
        wait_for(lambda: host.title(wid).startswith("Ghost Mesh: Paused (user)"))
        items = {str(i): i for i in tray.menu.items if str(i)}
        assert items["Paused"].checked is True
        assert str(tray.menu.items[0]).startswith("Paused (user)")  # the status line

        items["Paused"](tray.icon)  # unchecking it from the menu resumes
        wait_for(lambda: not controller.status()["paused"])
        wait_for(lambda: host.title(wid).startswith("Ghost Mesh: Idle"))
        assert items["Paused"].checked is False

        items["Open protected folder"](tray.icon)
        items["Open log"](tray.icon)
        assert opened == [tmp_path, tmp_path / "ghostmesh.log"]
        items["Quit"](tray.icon)
        assert quit_asked.is_set()
    finally:
        tray.stop()
        runner.join(10)
        host.close()
    assert not runner.is_alive()


@pytest.mark.parametrize("state", ["idle", "working", "paused", "error", "starting"])
def test_each_state_has_its_own_icon(state):
    img = icon_image(state)
    assert img.size == (64, 64) and img.mode == "RGBA"
    others = {s: icon_image(s).tobytes() for s in ["idle", "working", "paused", "error"] if s != state}
    assert img.tobytes() not in others.values()
    assert status_line({"state": state, "queue": 2, "done": 5, "pause_reasons": ["user"], "current": "/a/b.jpg"})

