"""The backfill driver: walk lazily, ask the ledger, keep a bounded number of photos in flight.

Ray Core actors, not Ray Data: see the package docstring for why. Memory on the driver is bounded
by the number of workers (one job in flight per worker, plus its bytes in ``bytes`` mode), never by
the size of the library: paths come from a lazy walk, finished photos are answered by the ledger
and the report is streamed from the ledger at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..daemon.readiness import content_hash
from ..engine import EngineSettings
from ..imaging import SUPPORTED_SUFFIXES, is_output, output_path
from ..imaging.atomic import atomic_output, is_temp
from ..report import ReportEntry
from .ledger import FINAL, BatchLedger, Row, exclusive
from .worker import BatchWorker, Job, Outcome, clean_stale_temps

log = logging.getLogger("ghostmesh.batch")

TRANSFERS = ("auto", "shared", "bytes")
EARLIER_NOTE = "finished in an earlier run (from the backfill ledger); not done again"


@dataclass
class BackfillOptions:
    paths: list[Path]
    settings: EngineSettings
    ledger: Path
    cluster: str = "auto"  # auto (RAY_ADDRESS, else a local instance), local, or an address
    workers: int | None = None  # default: one per GPU, else one per `cpus_per_worker` CPUs
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # default: 1 when the cluster has GPUs
    transfer: str = "auto"
    out_dir: Path | None = None
    keep_weak: bool = False
    strip_gps: bool = False
    max_attempts: int = 3  # per photo, over all runs
    worker_restarts: int = 2  # Ray restarts of a dead worker (and retries of its photo)
    report: Path | None = None
    argv: list[str] = field(default_factory=list)


@dataclass
class Summary:
    counts: dict[str, int]  # this run's photos by report status (ok, weak, failed, skipped)
    earlier: int  # of which finished in an earlier run
    seconds: float
    processed: int  # photos a worker handled in this run
    workers: int
    report: Path | None
    interrupted: bool = False

    @property
    def total(self) -> int:
        return sum(self.counts.values())


OnEntry = Callable[[dict[str, Any], bool], None]


# --- walking --------------------------------------------------------------------------------------

def walk(paths: Iterable[Path]) -> Iterator[Path]:
    """Files as given; folders walked recursively and lazily (one folder's names in memory at a
    time, sorted), for supported photos; our own outputs and temporaries are left out."""
    for path in paths:
        path = Path(path)
        if path.is_dir():
            yield from _walk_dir(path)
        elif not (is_output(path) or is_temp(path)):
            yield path


def _walk_dir(folder: Path) -> Iterator[Path]:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        log.warning("cannot read folder %s: %s", folder, e)
        return
    subdirs = []
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False):
                subdirs.append(e.path)
            elif e.is_file() and Path(e.name).suffix.lower() in SUPPORTED_SUFFIXES:
                p = Path(e.path)
                if not (is_output(p) or is_temp(p)):
                    yield p
        except OSError:
            continue
    del entries
    for d in subdirs:
        yield from _walk_dir(Path(d))


# --- Ray ------------------------------------------------------------------------------------------

#: Ray turns 127.0.0.1 into the machine's network address so that other nodes can join. A local
#: instance on one workstation needs no network, so it stays on loopback: nothing outside the
#: machine can reach it. This variable is Ray's switch for that, read when ray is first imported.
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def starts_local(cluster: str) -> bool:
    """Whether ``--cluster`` means a Ray instance of our own on this machine."""
    return cluster == "local" or (cluster == "auto" and not os.environ.get("RAY_ADDRESS"))


def import_ray(local: bool = False):
    """Ray, or a usage error naming the extra; ``local``: keep the instance we start on loopback."""
    if local and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ONLY, "0")
    try:
        import ray
    except ImportError:
        from ..errors import UsageError

        raise UsageError("ghostmesh backfill needs Ray: pip install 'ghostmesh[cluster]'") from None
    return ray


@contextlib.contextmanager
def connected(cluster: str, local_cpus: float | None = None) -> Iterator[Any]:
    """Ray, connected: an already initialised Ray as it is (and left running); ``auto`` joins
    ``$RAY_ADDRESS`` or starts a local instance; ``local`` starts one; anything else is an address."""
    ray = import_ray(local=starts_local(cluster))
    if ray.is_initialized():
        yield ray
        return
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    address = os.environ.get("RAY_ADDRESS") if cluster == "auto" else (None if cluster == "local" else cluster)
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(address="local", num_cpus=int(local_cpus or os.cpu_count() or 1), **common)
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass
class _Slot:
    actor: Any
    mode: str | None = None  # shared | bytes, once the worker has said
    job: tuple[Row, Job] | None = None


class _Pool:
    """Workers created on demand (up to ``size``), one job in flight each; dead ones replaced."""

    def __init__(self, ray, opts: BackfillOptions, on_outcome) -> None:
        self.ray = ray
        self.opts = opts
        self.on_outcome = on_outcome
        self.driver_node = ray.get_runtime_context().get_node_id()
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        wants_gpu = opts.settings.device in ("auto",) or opts.settings.device.startswith("cuda")
        if opts.gpus_per_worker:  # asked for: even where none is up yet (an autoscaling cluster adds them)
            self.gpu_each = opts.gpus_per_worker
        else:
            self.gpu_each = 1.0 if gpus >= 1 and wants_gpu else 0.0
        if opts.workers:
            self.size = opts.workers
        elif self.gpu_each:
            self.size = max(1, int(gpus // self.gpu_each))
        else:
            self.size = max(1, int(resources.get("CPU", 1) // opts.cpus_per_worker))
        self.slots: list[_Slot] = []
        self.inflight: dict[Any, _Slot] = {}
        self.replaced = 0
        self.peak = 0  # the most workers at once
        self.settings = opts.settings
        if self.gpu_each and opts.settings.device.startswith("cuda:"):
            # Ray gives each worker its own GPU(s) as cuda:0..; a fixed index would point elsewhere.
            self.settings = dataclasses.replace(opts.settings, device="cuda")
        self.worker_cls = ray.remote(BatchWorker).options(
            num_cpus=opts.cpus_per_worker, num_gpus=self.gpu_each,
            max_restarts=opts.worker_restarts, max_task_retries=opts.worker_restarts,
        )

    def _new_actor(self):
        return self.worker_cls.remote(self.settings)

    def free_slot(self) -> _Slot:
        """A worker with nothing in flight: an idle one, a new one, or the first to finish."""
        while True:
            for s in self.slots:
                if s.job is None:
                    return s
            if len(self.slots) < self.size:
                self.slots.append(_Slot(self._new_actor()))
                self.peak = max(self.peak, len(self.slots))
                continue
            self.wait_one()

    def submit(self, slot: _Slot, row: Row, job: Job) -> None:
        """Send ``job`` to ``slot``'s worker (with the photo's bytes when it cannot see the file);
        a photo the driver cannot read, or that changed since it was keyed, fails here by name."""
        reason = None
        if self.opts.transfer == "bytes" or slot.mode == "bytes":
            try:
                job.data = Path(job.src).read_bytes()
            except OSError as e:
                reason = f"cannot read: {e.strerror or e}"
            else:
                if hashlib.sha256(job.data).hexdigest() != job.hash:
                    reason = "changed since the run read it; run again to protect the new version"
        if reason:
            job.data = None
            self.on_outcome(row, job, ReportEntry.failed(job.src, reason).to_dict(), None)
            return
        slot.job = (row, job)
        self.inflight[slot.actor.protect.remote(job)] = slot

    def wait_one(self) -> None:
        ready, _ = self.ray.wait(list(self.inflight), num_returns=1)
        for ref in ready:
            self._collect(ref)

    def drain(self) -> None:
        while self.inflight:
            self.wait_one()

    def _collect(self, ref) -> None:
        from ray import exceptions as rx

        slot = self.inflight.pop(ref)
        row, job = slot.job  # type: ignore[misc]
        try:
            out: Outcome = self.ray.get(ref)
        except rx.RayActorError as e:
            slot.job = None
            self._worker_lost(slot, e)
            reason = (f"its worker died while processing it, {self.opts.worker_restarts + 1} times "
                      f"(restarts exhausted; retried by a later run): {_first_line(e)}")
            clean_stale_temps(Path(job.dest))
            self.on_outcome(row, job, ReportEntry.failed(job.src, reason).to_dict(), None)
            return
        except rx.RayError as e:  # a bug in the worker, out of memory: this photo fails, the run goes on
            slot.job = None
            self.on_outcome(row, job, ReportEntry.failed(job.src, f"processing failed in the worker: {_first_line(e)}").to_dict(), None)
            return
        slot.job = None
        if out.need_bytes:
            slot.mode = "bytes"
            job.data = None
            self.submit(slot, row, job)
            return
        slot.mode = slot.mode or out.transfer
        self.on_outcome(row, job, out.entry.to_dict() if out.entry else None, out)

    def _worker_lost(self, slot: _Slot, error: Exception) -> None:
        """Ray gave up on this worker (its restarts are spent): a fresh one takes its place, a bounded
        number of times for the run."""
        with contextlib.suppress(Exception):
            self.ray.kill(slot.actor, no_restart=True)
        if self.replaced < self.size * (self.opts.worker_restarts + 1):
            self.replaced += 1
            slot.actor = self._new_actor()
            slot.mode = None
        else:
            self.slots.remove(slot)
            if not self.slots:
                self.size = 0
                from ..errors import GhostMeshError

                raise GhostMeshError(f"backfill: every worker died ({self.replaced} replaced); last error: "
                                     f"{_first_line(error)}; run it again to go on where it stopped")
            self.size = len(self.slots)

    def requeue_inflight(self, ledger: BatchLedger) -> None:
        for slot in self.inflight.values():
            if slot.job:
                ledger.requeue(slot.job[1].hash, slot.job[1].dest)

    def shutdown(self) -> None:
        for s in self.slots:
            with contextlib.suppress(Exception):
                self.ray.kill(s.actor, no_restart=True)
        self.slots.clear()
        self.inflight.clear()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


# --- the run --------------------------------------------------------------------------------------

def write_bytes_output(entry: dict[str, Any], dest: Path, data: bytes) -> dict[str, Any]:
    """Publish a worker's protected file under ``dest`` on the driver, atomically, never over a
    file that is not one of our outputs."""
    try:
        if dest.is_symlink() or (dest.exists() and not is_output(dest)):
            raise FileExistsError
        if not dest.parent.is_dir():
            return {**entry, "status": "failed", "output": None, "reason": f"output folder {dest.parent} does not exist"}
        with atomic_output(dest, replace=dest.exists()) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except FileExistsError:
        return {**entry, "status": "failed", "output": None,
                "reason": f"{dest} already exists and is not a Ghost Mesh output; not overwritten"}
    except OSError as e:
        return {**entry, "status": "failed", "output": None, "reason": f"cannot write {dest}: {e.strerror or e}; no partial output left"}
    return entry


def run_backfill(opts: BackfillOptions, *, on_entry: OnEntry | None = None,
                 progress: Callable[[int | None], Any] | None = None) -> Summary:
    """Protect every photo under ``opts.paths`` that the ledger does not know as finished.

    ``on_entry(entry, earlier)`` is called once per photo in the order they finish (``earlier``: it
    was finished by an earlier run). ``progress(total)`` may return a bar with ``update(n)`` (tqdm).
    """
    if opts.transfer not in TRANSFERS:
        raise ValueError(f"transfer must be one of {', '.join(TRANSFERS)}")
    started = time.perf_counter()
    with exclusive(opts.ledger):
        ledger = BatchLedger(opts.ledger)
        try:
            return _run(opts, ledger, on_entry or (lambda e, earlier: None), progress, started)
        finally:
            ledger.close()


def _run(opts: BackfillOptions, ledger: BatchLedger, on_entry: OnEntry, progress, started: float) -> Summary:
    ledger.recover(opts.max_attempts)
    run = ledger.start_run(opts.argv)
    bar = progress(sum(1 for _ in walk(opts.paths))) if progress else None
    unreadable: list[dict[str, Any]] = []
    processed = 0
    pool: _Pool | None = None
    stack = contextlib.ExitStack()

    def tick() -> None:
        if bar is not None:
            bar.update(1)

    def on_outcome(row: Row, job: Job, entry: dict[str, Any] | None, out: Outcome | None) -> None:
        nonlocal processed
        processed += 1
        if entry is None:
            entry = ReportEntry.failed(job.src, "the worker returned no report").to_dict()
        if out is not None and out.transfer == "bytes" and out.output is not None:
            entry = write_bytes_output(entry, Path(job.dest), out.output)
        entry["input"] = job.src
        ledger.finish(row.hash, row.dest, entry, run)
        on_entry(entry, False)
        tick()

    interrupted = False
    try:
        for src in walk(opts.paths):
            try:
                st = src.stat()
                content = ledger.known_hash(str(src), st.st_size, st.st_mtime_ns) or content_hash(src)
            except OSError as e:
                entry = ReportEntry.failed(src, "no such file" if isinstance(e, FileNotFoundError)
                                           else f"cannot read: {e.strerror or e}").to_dict()
                unreadable.append(entry)
                on_entry(entry, False)
                tick()
                continue
            dest = output_path(src, out_dir=opts.out_dir)
            row = ledger.arrive(run, str(src), str(dest), st.st_size, st.st_mtime_ns, content)
            if _finished(row, opts.max_attempts):
                entry = _stored_entry(row)
                on_entry(entry, True)
                tick()
                continue
            if pool is None:
                ray = stack.enter_context(connected(opts.cluster, _local_cpus(opts)))
                pool = _Pool(ray, opts, on_outcome)
                stack.callback(pool.shutdown)
            slot = pool.free_slot()
            if row.interrupted:
                clean_stale_temps(dest)
            ledger.mark_processing(row.hash, row.dest)
            job = Job(src=str(src), dest=str(dest), hash=content, driver_node=pool.driver_node,
                      transfer=opts.transfer, keep_weak=opts.keep_weak, strip_gps=opts.strip_gps,
                      interrupted=row.interrupted)
            pool.submit(slot, row, job)
        if pool is not None:
            pool.drain()
    except KeyboardInterrupt:
        interrupted = True
        if pool is not None:
            pool.requeue_inflight(ledger)
        raise
    finally:
        stack.close()
        if bar is not None and hasattr(bar, "close"):
            bar.close()
        counts, earlier = _write_report_and_count(ledger, run, opts.report, unreadable)
        ledger.finish_run(run, {**counts, "earlier": earlier, "interrupted": int(interrupted)})
    return Summary(counts=counts, earlier=earlier, seconds=time.perf_counter() - started, processed=processed,
                   workers=pool.peak if pool else 0, report=opts.report, interrupted=interrupted)


def _local_cpus(opts: BackfillOptions) -> float:
    return max(os.cpu_count() or 1, (opts.workers or 0) * opts.cpus_per_worker)


def _finished(row: Row, max_attempts: int) -> bool:
    if row.state in FINAL:
        # A copy the user deleted since is made again.
        return not (row.state in ("done", "weak") and row.output and not Path(row.output).exists())
    return row.state == "failed" and row.attempts >= max_attempts


def _stored_entry(row: Row) -> dict[str, Any]:
    entry = row.entry_dict() or ReportEntry.failed(row.path, row.last_error or "failed").to_dict()
    entry["input"] = row.path
    note = EARLIER_NOTE
    if row.state == "failed":
        note = f"failed in earlier runs ({row.attempts} attempts, the most --max-attempts allows); not tried again"
    entry["notes"] = [*entry.get("notes", []), note]
    return entry


def _write_report_and_count(ledger: BatchLedger, run: str, dest: Path | None,
                            extra: list[dict[str, Any]]) -> tuple[dict[str, int], int]:
    counts = dict.fromkeys(("ok", "weak", "failed", "skipped"), 0)
    earlier = 0

    def entries() -> Iterator[dict[str, Any]]:
        nonlocal earlier
        for row in ledger.run_rows(run):
            if row.state in ("pending", "processing"):
                continue  # the run was interrupted before this one finished
            if row.done_run != run:
                earlier += 1
                entry = _stored_entry(row)
            else:
                entry = row.entry_dict() or ReportEntry.failed(row.path, row.last_error or "failed").to_dict()
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
            yield entry
        for entry in extra:
            counts["failed"] += 1
            yield entry

    if dest is None:
        for _ in entries():
            pass
    else:
        write_report_stream(entries(), Path(dest))
    return counts, earlier


def write_report_stream(entries: Iterable[dict[str, Any]], dest: Path) -> None:
    """The same JSON as :func:`ghostmesh_daemon.report.write_report` (a list, ``indent=2``), written
    entry by entry so a million photos never sit in memory; atomic like it."""
    with atomic_output(Path(dest)) as tmp:
        with open(tmp, "x", encoding="utf-8") as f:
            first = True
            for entry in entries:
                f.write("[\n" if first else ",\n")
                f.write(textwrap.indent(json.dumps(entry, indent=2, allow_nan=False), "  "))
                first = False
            f.write("[]\n" if first else "\n]\n")
            f.flush()
            os.fsync(f.fileno())
