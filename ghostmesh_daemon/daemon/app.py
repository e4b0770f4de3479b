"""The daemon assembled: the controller plus the parts that send it commands, started and stopped
in an order that loses nothing.

Start: controller (ledger opened, crash recovery) -> debouncer -> watcher -> a full rescan (catches
what arrived while we were down; the watcher is already up, so nothing slips between) -> control
socket -> scheduler -> tray (or headless). Stop (SIGTERM, SIGINT, tray Quit): the sources first
(scheduler, watcher, debouncer), then the controller, which lets the current photo finish or
abandons it through ``should_stop`` (no half file: every output is written atomically), then the
socket and the tray.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DaemonConfig
from . import paths
from .control import ControlServer
from .controller import USER, Controller, ControllerOptions, GetStatus, Pause, ProcessPhoto, Resume
from .debouncer import Debouncer
from .matcher import Matcher
from .scheduler import Scheduler
from .tray import Tray
from .watcher import Watcher

log = logging.getLogger("ghostmesh.daemon")


@dataclass
class DaemonPaths:
    ledger: Path = field(default_factory=paths.ledger_path)
    socket: Path = field(default_factory=paths.socket_path)
    log: Path = field(default_factory=paths.log_path)


def matcher_for(config: DaemonConfig) -> Matcher:
    return Matcher(
        output_suffix=config["output.suffix"],
        output_subfolder=config["output.subfolder"],
        patterns=tuple(config["watcher.ignore"]),
    )


class Daemon:
    def __init__(
        self,
        config: DaemonConfig,
        process: ProcessPhoto,
        *,
        models: dict[str, Any] | None = None,
        tray: bool = True,
        where: DaemonPaths | None = None,
        stop_grace: float = 4.0,
        protector: Any = None,
    ) -> None:
        self.config = config
        #: the loaded engine, for photos handed over by `ghostmesh protect` (daemon/handoff.py)
        self.protector = protector
        self.where = where or DaemonPaths()
        self.want_tray = tray and config["tray.enabled"]
        self.roots = [f.path for f in config.folders]
        matcher = matcher_for(config)
        self.debouncer = Debouncer(lambda p: self.controller.arrived_file(p), config["watcher.settle_seconds"])
        self.controller = Controller(
            self.where.ledger,
            process,
            ControllerOptions(
                roots=self.roots,
                matcher=matcher,
                settle_seconds=config["watcher.settle_seconds"],
                max_attempts=config["retry.max_attempts"],
                backoff_seconds=config["retry.backoff_seconds"],
                stop_grace=stop_grace,
                models=models or {},
            ),
            recent_file=self.debouncer.touch,
        )
        self.watcher = Watcher(
            config.folders,
            matcher,
            file_changed=lambda p, closed: self.debouncer.touch(p, closed=closed),
            folder_arrived=self.controller.rescan,
            poll_interval=config["watcher.poll_interval"],
        )
        self.scheduler = Scheduler(
            self.controller,
            rescan_minutes=config["schedule.rescan_minutes"],
            quiet_hours=config["schedule.quiet_hours"],
            only_on_ac_power=config["schedule.only_on_ac_power"],
            maintenance_hours=config["schedule.maintenance_hours"],
        )
        self.server: ControlServer | None = None
        self.tray: Tray | None = None
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()

    # --- control channel -----------------------------------------------------------------------

    def answer(self, cmd: str) -> dict[str, Any]:
        if cmd == "pause":
            self.controller.send(Pause(USER))
        elif cmd == "resume":
            self.controller.send(Resume(USER))
        # Commands are handled in order, so this status already reflects a pause or resume.
        return {"status": self.controller.ask(GetStatus())}

    # --- life cycle ----------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        """Safe from a signal handler: only sets a flag; the stopper thread does the work."""
        self._stop_requested.set()

    def run(self) -> int:
        """Run until stopped. The caller holds the single-instance lock."""
        self.start()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self.request_stop)
            if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>`: every thread's stack on stderr
                faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
        stopper = threading.Thread(target=self._stop_when_asked, name="ghostmesh-stopper", daemon=True)
        stopper.start()
        if self.tray is not None:
            self.tray.run()  # returns once the stopper has stopped the tray
        while not self._stopped.wait(1.0):  # a timeout, so signals are handled promptly
            pass
        return 0

    def start(self) -> None:
        self.controller.start()
        self.debouncer.start()
        self.watcher.start()
        self.controller.rescan()
        handoff = None
        if self.protector is not None:
            from .handoff import HandoffService

            handoff = HandoffService(self.protector, self.controller,
                                     paused=lambda: list(self.controller.ask(GetStatus())["pause_reasons"]))
        self.server = ControlServer(self.where.socket, self.answer, stream=handoff)
        self.server.start()
        self.scheduler.start()
        if self.want_tray:
            self.tray = Tray.create(
                self.controller,
                protected_folder=self._protected_folder(),
                log_file=self.where.log,
                on_quit=self.request_stop,
            )
        else:
            log.info("running without a tray icon (--no-tray or tray.enabled = false)")
        log.info("ghostmesh daemon started: watching %s; control socket %s",
                 ", ".join(map(str, self.roots)), self.where.socket)

    def _protected_folder(self) -> Path:
        sub = self.config["output.subfolder"]
        first = self.roots[0]
        return first / sub if sub and (first / sub).is_dir() else first

    def _stop_when_asked(self) -> None:
        while not self._stop_requested.wait(1.0):
            if self.controller.exited.is_set():
                log.error("the controller stopped unexpectedly; shutting down")
                break
        self.shutdown()

    def shutdown(self) -> None:
        try:
            self.scheduler.stop()
            self.watcher.stop()
            self.debouncer.stop()
            self.controller.stop()
            self.controller.join(self.controller.options.stop_grace + 3)
            if self.server is not None:
                self.server.stop()
            if self.tray is not None:
                self.tray.stop()
            log.info("ghostmesh daemon stopped")
        finally:
            self._stopped.set()
