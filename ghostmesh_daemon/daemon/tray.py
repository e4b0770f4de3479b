"""The tray icon: a thin adapter over the controller (the same one the CLI talks to).

pystray is imported only when a tray is wanted, and only where a display exists; anything that
stops it (no display, no backend, no X connection) makes the daemon run headless, and it says so
once. The icon shows the state (idle, working, paused, error); the menu has a status line, "Paused"
as a checked item (also the default action, i.e. a left click, where the backend has no menu), Open
protected folder, Open log and Quit.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from .controller import USER, Controller

log = logging.getLogger("ghostmesh.daemon")

COLOURS = {
    "idle": (46, 160, 67),
    "working": (31, 111, 235),
    "paused": (210, 153, 34),
    "error": (207, 34, 46),
    "starting": (128, 128, 128),
}


def icon_image(state: str, size: int = 64):
    """A round badge in the state's colour; paused gets two bars, error an exclamation mark."""
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.ellipse((2, 2, size - 3, size - 3), fill=COLOURS.get(state, COLOURS["starting"]) + (255,),
              outline=(255, 255, 255, 255), width=max(1, size // 16))
    w = size // 8
    if state == "paused":
        d.rectangle((size * 3 // 8 - w // 2, size // 4, size * 3 // 8 + w // 2, size * 3 // 4), fill="white")
        d.rectangle((size * 5 // 8 - w // 2, size // 4, size * 5 // 8 + w // 2, size * 3 // 4), fill="white")
    elif state == "error":
        d.rectangle((size // 2 - w // 2, size // 5, size // 2 + w // 2, size * 3 // 5), fill="white")
        d.rectangle((size // 2 - w // 2, size * 7 // 10, size // 2 + w // 2, size * 4 // 5), fill="white")
    elif state == "working":
        d.ellipse((size // 3, size // 3, size * 2 // 3, size * 2 // 3), fill="white")
    return img


def status_line(summary: dict[str, Any]) -> str:
    state = summary.get("state", "starting")
    queued = summary.get("queue", 0)
    done = summary.get("done", 0)
    if state == "paused":
        why = ", ".join(summary.get("pause_reasons") or [])
        return f"Paused ({why}): {queued} waiting"
    if state == "working":
        name = Path(summary.get("current") or "").name
        return f"Protecting {name} ({queued} more waiting)"
    weak = summary.get("weak", 0)
    weak_part = f", {weak} weak (not protected)" if weak else ""
    if state == "error":
        what = "was not protected (weak)" if summary.get("last_problem") == "weak" else "failed"
        return f"Last photo {what}: {done} protected{weak_part}, {queued} waiting"
    if state == "idle":
        return f"Idle: {done} protected{weak_part}"
    return "Starting"


def open_path(path: Path) -> None:
    """Open a file or folder with the desktop's default application, without waiting for it."""
    if sys.platform == "win32":
        os.startfile(path)  # type: ignore[attr-defined]
        return
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    subprocess.Popen([opener, str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)


def display_problem(environ: dict[str, str] | os._Environ = os.environ) -> str | None:
    """Why no tray can be shown here (``None`` if one might be)."""
    if sys.platform.startswith("linux") and not (environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY and WAYLAND_DISPLAY are unset)"
    return None


class Tray:
    """Create with :meth:`create`; :meth:`run` blocks (pystray wants the main thread) until :meth:`stop`."""

    def __init__(
        self,
        pystray: Any,
        controller: Controller,
        *,
        protected_folder: Path,
        log_file: Path,
        on_quit: Callable[[], None],
        opener: Callable[[Path], None] = open_path,
    ) -> None:
        self.controller = controller
        self.protected_folder = protected_folder
        self.log_file = log_file
        self._on_quit = on_quit
        self._opener = opener
        self._summary: dict[str, Any] = {"state": "starting"}
        self._applied: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self._stopped = False
        self._flusher_done = threading.Event()
        self._loop_ended = threading.Event()
        self._flusher: threading.Thread | None = None
        item = pystray.MenuItem
        self.menu = pystray.Menu(
            item(lambda _: status_line(self._summary), None, enabled=False),
            pystray.Menu.SEPARATOR,
            item("Paused", self._toggle_pause, checked=lambda _: USER in (self._summary.get("pause_reasons") or []), default=True),
            item("Open protected folder", lambda *_: self._open(self.protected_folder)),
            item("Open log", lambda *_: self._open(self.log_file)),
            pystray.Menu.SEPARATOR,
            item("Quit", lambda *_: self._on_quit()),
        )
        self.icon = pystray.Icon("ghostmesh", icon_image("starting"), "Ghost Mesh: starting", self.menu)
        controller.add_listener(self._on_summary)

    @classmethod
    def create(cls, controller: Controller, **kw: Any) -> "Tray | None":
        """A tray, or ``None`` after logging once why the daemon runs headless."""
        problem = display_problem()
        if problem is None:
            try:
                import pystray  # lazy: it connects to the display at import time

                return cls(pystray, controller, **kw)
            except Exception as e:  # ImportError, Xlib's display errors, backend failures
                problem = f"no tray backend ({type(e).__name__}: {e})".strip()
        log.info("running headless: %s", problem)
        return None

    # --- controller side -----------------------------------------------------------------------

    def _on_summary(self, summary: dict[str, Any]) -> None:
        """Runs on the controller thread: only records, the tray's own thread applies it."""
        with self._cond:
            self._summary = summary
            self._cond.notify_all()

    def _toggle_pause(self, *_: Any) -> None:
        # Unchecking "Paused" lifts the user's pause; rules (quiet hours, battery) keep holding.
        if USER in (self._summary.get("pause_reasons") or []):
            self.controller.resume(USER)
        else:
            self.controller.pause(USER)

    def _open(self, path: Path) -> None:
        try:
            self._opener(path)
        except Exception as e:
            log.warning("cannot open %s: %s", path, e)

    # --- tray side -----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.icon.run(setup=self._setup)
        finally:
            self._loop_ended.set()
            # Only now: the loop's own last requests (destroying its window) may need the flusher.
            self._flusher_done.set()
            if self._flusher is not None:
                self._flusher.join(2.0)

    def stop(self) -> None:
        """Stop applying updates first, then stop the icon: pystray's X backend runs each update on
        its loop and waits for it, so an update sent after the loop ended would wait forever."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        updater = getattr(self, "_updater", None)
        if updater is not None:
            updater.join(2.0)
        if not self._loop_ended.is_set():  # a loop that died (X server gone) cannot run a stop
            self.icon.stop()

    def _setup(self, icon: Any) -> None:
        """pystray's setup thread: show the icon, then hand updates to a thread of our own (a daemon
        thread, so a backend that hangs can never keep the process alive at exit)."""
        display = getattr(icon, "_display", None)
        if display is not None:
            self._flusher = threading.Thread(target=self._flush_x, args=(display,), name="ghostmesh-tray-x",
                                             daemon=True)
            self._flusher.start()
        icon.visible = True
        self._updater = threading.Thread(target=self._apply_loop, name="ghostmesh-tray", daemon=True)
        self._updater.start()

    def _flush_x(self, display: Any) -> None:
        """Flush pystray's X connection a few times a second (X backend only).

        python-xlib can strand a request when two threads use one connection: a request queued by
        one thread while another is mid-send stays unsent while the loop thread blocks in select(),
        until some unrelated X event wakes it (seen under load: the icon kept showing "working" after
        the photo was done, and a stop could wait on its own stranded message). A flush from a third
        thread sends whatever is stranded; with nothing to send it costs a lock and a check.
        """
        while not self._flusher_done.wait(0.25):
            try:
                display.flush()
            except Exception:
                return

    def _apply_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and self._summary is self._applied:
                    self._cond.wait()
                if self._stopped:
                    return
                summary = self._applied = self._summary
            state = summary.get("state", "starting")
            log.debug("tray: showing %s", status_line(summary))
            self.icon.icon = icon_image(state)
            self.icon.title = f"Ghost Mesh: {status_line(summary)}"
            self.icon.update_menu()
