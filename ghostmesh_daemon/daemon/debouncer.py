"""Hold each changed file until it has stopped changing, then hand it on once.

A file is released when (1) no event has touched it for ``settle`` seconds (``settle / 4`` after a
close-after-write event or a rename into place, the two ways writers say they are done), (2) its size and mtime are
what they were at the last event, and (3) it decodes to the end. A file that keeps failing to
decode while nothing changes is released after ``settle * decode_grace`` anyway, so a corrupt photo
is recorded as failed rather than held forever. Any new event starts the wait again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .readiness import decode_problem

log = logging.getLogger("ghostmesh.daemon")


@dataclass
class _Pending:
    sig: tuple[int, int]
    due: float
    changed_at: float
    generation: int = 0


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


class Debouncer:
    """Thread-safe: ``touch`` is called from observer threads, ``emit`` runs on the debouncer's own."""

    def __init__(
        self,
        emit: Callable[[Path], None],
        settle: float = 2.0,
        *,
        decode_grace: float = 3.0,
        decode: Callable[[Path], str | None] = decode_problem,
    ) -> None:
        self._emit = emit
        self.settle = settle
        self.closed_settle = max(0.1, settle / 4)
        self.decode_grace = decode_grace
        self._decode = decode
        self._items: dict[Path, _Pending] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="ghostmesh-debouncer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def touch(self, path: Path, *, closed: bool = False) -> None:
        """Something happened to ``path``: (re)start its quiet window."""
        sig = _signature(path)
        if sig is None:  # gone already (a temporary renamed away, a deleted file)
            with self._cond:
                self._items.pop(Path(path), None)
            return
        now = time.monotonic()
        with self._cond:
            item = self._items.get(Path(path))
            if item is None:
                item = self._items[Path(path)] = _Pending(sig, 0.0, now)
            elif item.sig != sig:
                item.changed_at = now
            item.sig = sig
            item.generation += 1
            item.due = now + (self.closed_settle if closed else self.settle)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    due = [(p, it.generation, it.sig) for p, it in self._items.items() if it.due <= now]
                    if due:
                        break
                    wait = min((it.due for it in self._items.values()), default=None)
                    self._cond.wait(None if wait is None else max(0.0, wait - now))
                if self._stopped:
                    return
            for path, generation, sig in due:
                try:
                    self._check(path, generation, sig)
                except Exception:  # one bad file must not stop the debouncer
                    log.exception("debouncer: checking %s failed", path)
                    with self._cond:
                        self._items.pop(path, None)

    def _check(self, path: Path, generation: int, sig: tuple[int, int]) -> None:
        now_sig = _signature(path)
        now = time.monotonic()
        if now_sig is None:
            with self._cond:
                self._items.pop(path, None)
            return
        if now_sig != sig:  # changed without an event (polling, network shares): wait again
            with self._cond:
                item = self._items.get(path)
                if item is not None and item.generation == generation:
                    item.sig, item.changed_at, item.due = now_sig, now, now + self.settle
            return
        problem = self._decode(path)
        with self._cond:
            item = self._items.get(path)
            if item is None or item.generation != generation:
                return  # touched again while we decoded: its new window decides
            if problem is not None and now - item.changed_at < self.settle * self.decode_grace:
                item.due = now + self.settle
                return
            del self._items[path]
        if problem is not None:
            log.info("%s: still does not decode after %.0f s without change (%s); queuing it anyway",
                     path, now - item.changed_at, problem)
        self._emit(path)
