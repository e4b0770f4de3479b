"""The Ray actor of a backfill: one loaded :class:`~ghostmesh_daemon.pipeline.Protector` per worker.

This module never imports ``ray`` at import time (the driver wraps :class:`BatchWorker` with
``ray.remote`` when it creates actors), so the core package and its tests stay free of it.

A job names the photo by the driver's path and the content hash the driver's ledger keyed it by.

* **shared** (the worker sees the driver's files): the worker checks that the file it sees at that
  path has that hash (the same photo, not a namesake on another machine), then protects it with its
  copy written beside the original exactly as ``protect`` does (hidden temporary, measured, renamed).
* **bytes** (it does not): the job carries the photo's bytes; the worker protects a copy in its own
  scratch folder and returns the encoded protected file; the driver writes it atomically.

In ``auto`` mode a worker on another node that cannot see the photo answers ``need_bytes`` and the
driver sends the bytes (and keeps sending bytes to that worker).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..daemon.readiness import content_hash
from ..engine import EngineSettings
from ..imaging.atomic import TEMP_MARKER
from ..report import ReportEntry

log = logging.getLogger("ghostmesh.batch")

def clean_stale_temps(dest: Path) -> int:
    """Remove the hidden temporaries a killed writer left beside ``dest`` (``.<name>.ghosttmp-*``).
    Only called for a photo whose previous attempt was interrupted, so no live writer owns them."""
    removed = 0
    with contextlib.suppress(OSError):
        for p in Path(dest).parent.glob(f".{Path(dest).name}{TEMP_MARKER}*"):
            with contextlib.suppress(OSError):
                p.unlink()
                removed += 1
    return removed


@dataclass
class Job:
    src: str
    dest: str
    hash: str
    driver_node: str
    transfer: str  # auto | shared | bytes (the run's option)
    keep_weak: bool = False
    strip_gps: bool = False
    data: bytes | None = None  # the photo, when sent as bytes
    interrupted: bool = False  # an earlier attempt was cut short: a stale temporary may be beside dest


@dataclass
class Outcome:
    entry: ReportEntry | None
    node: str
    pid: int
    transfer: str  # how this job was done: shared | bytes
    need_bytes: bool = False
    output: bytes | None = None  # bytes mode: the protected file, when one was written
    notes: list[str] = field(default_factory=list)


class BatchWorker:
    """One per Ray worker process: loads the models once, protects any number of photos."""

    def __init__(self, settings: EngineSettings) -> None:
        import ray

        from ..pipeline import Protector

        ctx = ray.get_runtime_context()
        self.node = ctx.get_node_id()
        self.restarted = bool(ctx.was_current_actor_reconstructed)
        self.protector = Protector(settings, warn=lambda m: log.warning("%s", m))
        # A scratch folder named by the actor (stable across its restarts): what a killed
        # incarnation left there is removed here.
        self.scratch = Path(tempfile.gettempdir()) / f"ghostmesh-batch-{ctx.get_actor_id()}"
        shutil.rmtree(self.scratch, ignore_errors=True)

    def info(self) -> dict:
        return {"node": self.node, "pid": os.getpid(), "device": str(self.protector.device),
                "targets": self.protector.target_names, "warnings": list(self.protector.warnings)}

    def protect(self, job: Job) -> Outcome:
        notes = []
        if self.restarted:
            # The first job after Ray restarted this worker is the one its previous process died on.
            notes.append("its worker died while processing it and was restarted; done again from the start")
            job.interrupted = True
            self.restarted = False
        if job.data is None:
            out = self._shared(job)
        else:
            out = self._bytes(job)
        out.notes = notes + out.notes
        if out.entry is not None:
            out.entry.notes.extend(out.notes)
        return out

    def _outcome(self, transfer: str, entry: ReportEntry | None = None, **kw) -> Outcome:
        return Outcome(entry=entry, node=self.node, pid=os.getpid(), transfer=transfer, **kw)

    def _shared(self, job: Job) -> Outcome:
        src = Path(job.src)
        try:
            same = src.is_file() and content_hash(src) == job.hash
        except OSError:
            same = False
        if not same:
            if self.node != job.driver_node and job.transfer == "auto":
                return self._outcome("shared", need_bytes=True)
            why = ("changed since the run read it; run again to protect the new version" if self.node == job.driver_node
                   else f"not visible (or not the same file) on worker node {self.node[:12]} (--transfer shared)")
            return self._outcome("shared", ReportEntry.failed(src, why, **self._common()))
        if job.interrupted:
            clean_stale_temps(Path(job.dest))
        entry = self.protector.protect_file(src, dest=Path(job.dest), keep_weak=job.keep_weak, strip_gps=job.strip_gps)
        return self._outcome("shared", entry)

    def _bytes(self, job: Job) -> Outcome:
        folder = self.scratch / uuid.uuid4().hex
        folder.mkdir(parents=True)
        try:
            src = folder / Path(job.src).name
            dest = folder / "out" / Path(job.dest).name
            dest.parent.mkdir()
            src.write_bytes(job.data or b"")
            entry = self.protector.protect_file(src, dest=dest, keep_weak=job.keep_weak, strip_gps=job.strip_gps)
            output = dest.read_bytes() if entry.output else None
            # The entry speaks of the driver's files, not of this scratch folder.
            entry = _rename_paths(entry, {str(src): job.src, str(dest): job.dest, str(folder): str(Path(job.src).parent)})
            entry.input, entry.output = job.src, (job.dest if output is not None else None)
            return self._outcome("bytes", entry, output=output)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):  # the actor's own folder too: nothing left in the temp dir
                self.scratch.rmdir()

    def _common(self) -> dict:
        p, s = self.protector, self.protector.settings
        return {"targets": p.target_names, "device": str(p.device), "preset": s.preset, "mode": s.mode,
                "limits": s.limits(), "warnings": list(p.warnings)}


def _rename_paths(entry: ReportEntry, mapping: dict[str, str]) -> ReportEntry:
    def fix(text: str | None) -> str | None:
        if text is None:
            return None
        for old, new in mapping.items():
            text = text.replace(old, new)
        return text

    entry.reason = fix(entry.reason)
    entry.notes = [fix(n) for n in entry.notes]  # type: ignore[misc]
    entry.warnings = [fix(w) for w in entry.warnings]  # type: ignore[misc]
    return entry
