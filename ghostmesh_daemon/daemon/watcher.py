"""Turn watchdog events into two calls: ``file_changed(path, closed)`` and ``folder_arrived(path)``.

The handler only reports; the debouncer decides when a file is done, the controller what to do with
it. The observer backend is chosen here and only here: the platform's native observer (inotify,
FSEvents, ReadDirectoryChangesW) for ordinary folders, a polling observer for folders configured with
``poll = true``, and polling as a fallback (with a warning) when native watching cannot be set up
(e.g. the inotify watch limit is reached).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from ..config import WatchFolder
from .matcher import Matcher

log = logging.getLogger("ghostmesh.daemon")

#: What we subscribe to. Opens and read-only closes are left out: our own reads must stay silent.
EVENTS = [DirCreatedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent, FileModifiedEvent, FileMovedEvent]


def _text(p: bytes | str) -> str:
    return p.decode() if isinstance(p, bytes) else p


class ArrivalHandler(FileSystemEventHandler):
    """Reports files that may have arrived or changed under one watched ``root``.

    A move or rename into the folder is an arrival of its destination (``IMG_1.jpg.part`` renamed to
    ``IMG_1.jpg`` is ignored under the first name, reported under the second). A folder moved in is
    reported whole, so its contents can be scanned.
    """

    def __init__(
        self,
        root: Path,
        matcher: Matcher,
        file_changed: Callable[[Path, bool], None],
        folder_arrived: Callable[[Path], None],
    ) -> None:
        self.root = root
        self.matcher = matcher
        self.file_changed = file_changed
        self.folder_arrived = folder_arrived

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._dispatch(event)
        except Exception:  # an exception here would kill the observer thread
            log.exception("watcher: handling %r failed", event)

    def _dispatch(self, event: FileSystemEvent) -> None:
        path = Path(_text(event.dest_path if event.event_type == "moved" else event.src_path))
        if event.is_directory:
            if event.event_type in ("created", "moved") and self.matcher.dir_reason(path, self.root) is None:
                self.folder_arrived(path)
            return
        if self.matcher.reason(path, self.root) is None:
            # A close after writing, or a rename into place, is how writers say "done": the
            # debouncer then waits a shorter window (it still checks stability and decoding).
            self.file_changed(path, event.event_type in ("closed", "moved"))


@dataclass
class Watcher:
    """Owns the observers for all watched folders."""

    folders: Sequence[WatchFolder]
    matcher: Matcher
    file_changed: Callable[[Path, bool], None]
    folder_arrived: Callable[[Path], None]
    poll_interval: float = 5.0

    def __post_init__(self) -> None:
        self._observers: list[BaseObserver] = []
        self.backends: dict[Path, str] = {}

    def _polling(self) -> BaseObserver:
        for obs in self._observers:
            if isinstance(obs, PollingObserver):
                return obs
        obs = PollingObserver(timeout=self.poll_interval)
        self._observers.append(obs)
        return obs

    def _native(self) -> BaseObserver:
        for obs in self._observers:
            if not isinstance(obs, PollingObserver):
                return obs
        obs = Observer()
        self._observers.append(obs)
        return obs

    def start(self) -> None:
        for folder in self.folders:
            handler = ArrivalHandler(folder.path, self.matcher, self.file_changed, self.folder_arrived)
            if not folder.poll and Observer is not PollingObserver:
                native = self._native()
                try:
                    native.schedule(handler, str(folder.path), recursive=True, event_filter=EVENTS)
                    self.backends[folder.path] = type(native).__name__
                    continue
                except OSError as e:
                    log.warning("%s: native change notifications failed (%s); polling every %g s instead",
                                folder.path, e, self.poll_interval)
            elif not folder.poll:
                log.warning("%s: no native change notifications on this platform; polling every %g s",
                            folder.path, self.poll_interval)
            self._polling().schedule(handler, str(folder.path), recursive=True, event_filter=EVENTS)
            self.backends[folder.path] = f"PollingObserver ({self.poll_interval:g} s)"
        for obs in self._observers:
            obs.daemon = True
            try:
                obs.start()
            except OSError as e:
                if isinstance(obs, PollingObserver):
                    raise
                # Native emitters are created at start(); a failure here (watch limit) falls back too.
                log.warning("native change notifications failed (%s); polling every %g s instead",
                            e, self.poll_interval)
                self._observers.remove(obs)
                self._fallback_all(obs)
        for path, backend in self.backends.items():
            log.info("watching %s (%s)", path, backend)

    def _fallback_all(self, failed: BaseObserver) -> None:
        polling = PollingObserver(timeout=self.poll_interval)
        polling.daemon = True
        for folder in self.folders:
            if self.backends.get(folder.path, "").startswith("Polling"):
                continue
            handler = ArrivalHandler(folder.path, self.matcher, self.file_changed, self.folder_arrived)
            polling.schedule(handler, str(folder.path), recursive=True, event_filter=EVENTS)
            self.backends[folder.path] = f"PollingObserver ({self.poll_interval:g} s, fallback)"
        polling.start()
        self._observers.append(polling)

    def stop(self, timeout: float = 2.0) -> None:
        for obs in self._observers:
            obs.stop()
        for obs in self._observers:
            if obs.is_alive():
                obs.join(timeout)
        self._observers.clear()
