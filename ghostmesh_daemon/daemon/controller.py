"""The controller: the one owner of the daemon's state, running one loop (Syncthing's folder ``Serve``).

It owns the ledger (and so the queue, which is the ledger's pending rows), the pause reasons, the
worker and the scan in progress. Every other part (debouncer, scanner thread, scheduler, tray,
control socket) only sends it commands through :meth:`Controller.send`, or :meth:`Controller.ask`
when it needs an answer (a reply future). Repeated rescan requests while a scan is queued or running
merge into one more scan.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from .. import ENGINE_VERSION, __version__
from ..report import ReportEntry
from .ledger import Ledger, Photo
from .matcher import Matcher, root_of
from .readiness import content_hash
from .scanner import ScanResult, scan

log = logging.getLogger("ghostmesh.daemon")

USER = "user"  # the pause reason of `ghostmesh pause` and the tray


class ProcessPhoto(Protocol):
    """What the worker runs for each photo (``Protector.protect_file`` bound to the daemon's output
    options in production; a small real function in the controller's unit tests)."""

    def __call__(
        self,
        src: Path,
        *,
        should_stop: Callable[[], bool],
        progress: Callable[[int, int], None],
    ) -> ReportEntry: ...


# --- commands ------------------------------------------------------------------------------------


@dataclass
class Arrived:
    """A complete file (debounced or found by a scan) with its content hash."""

    path: Path
    size: int
    mtime_ns: int
    hash: str


@dataclass
class Found:
    """A batch from the scanner; the reply lists the ones the ledger does not know yet."""

    results: list[ScanResult]
    reply: Future = field(default_factory=Future)


@dataclass
class Rescan:
    """Scan ``folder`` (inside a watched root), or every watched root when ``None``."""

    folder: Path | None = None


@dataclass
class ScanDone:
    pass


@dataclass
class Pause:
    reason: str = USER


@dataclass
class Resume:
    reason: str = USER


@dataclass
class GetStatus:
    reply: Future = field(default_factory=Future)


@dataclass
class Progress:
    hash: str
    step: int
    total: int


@dataclass
class Finished:
    photo: Photo
    entry: ReportEntry
    stopped: bool
    seconds: float


@dataclass(eq=False)
class HandoffJob:
    """A photo handed over by ``ghostmesh protect`` (or an editor's export hook) that a caller is
    waiting for: it goes before the watched folders' backlog and runs even while the daemon is
    paused (the user asked for it explicitly). Not in the ledger: the caller gets the report entry.

    ``run(should_stop, progress)`` does the work on the worker thread; ``future`` gets its entry;
    ``cancelled`` is set when the caller went away (the photo stops at its next step).
    """

    path: str
    run: Callable[..., ReportEntry]
    on_progress: Callable[[int, int], None] | None = None
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    hash: str = ""

    def __post_init__(self) -> None:
        self.hash = f"handoff-{id(self):x}"


@dataclass
class SubmitHandoff:
    """Queue ``jobs`` ahead of the backlog; the reply is how many photos are ahead of them (the one
    in progress and earlier hand-offs)."""

    jobs: list[HandoffJob]
    reply: Future = field(default_factory=Future)


@dataclass
class HandoffFinished:
    job: HandoffJob
    entry: ReportEntry
    seconds: float


@dataclass
class Maintain:
    reply: Future = field(default_factory=Future)


@dataclass
class Stop:
    pass


# --- the worker ----------------------------------------------------------------------------------


class Worker:
    """Runs one photo at a time on its own thread and reports back with :class:`Finished`.

    The engine is loaded once per process by whoever builds ``process``; the worker only calls it.
    """

    def __init__(self, process: ProcessPhoto, post: Callable[[Any], None], stop_event: threading.Event) -> None:
        self._process = process
        self._post = post
        self._stop_event = stop_event
        self._jobs: queue.Queue[Photo | HandoffJob | None] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="ghostmesh-worker", daemon=True)
        self.busy_with: Photo | HandoffJob | None = None  # read and written by the controller thread only

    def start(self) -> None:
        self._thread.start()

    def submit(self, photo: Photo | HandoffJob) -> None:
        self.busy_with = photo
        self._jobs.put_nowait(photo)

    def close(self) -> None:
        try:
            self._jobs.put_nowait(None)
        except queue.Full:
            pass

    def join(self, timeout: float) -> bool:
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while (photo := self._jobs.get()) is not None:
            started = time.monotonic()
            if isinstance(photo, HandoffJob):
                self._run_handoff(photo, started)
                continue

            def progress(step: int, total: int, _h: str = photo.hash) -> None:
                self._post(Progress(_h, step, total))

            try:
                entry = self._process(Path(photo.path), should_stop=self._stop_event.is_set, progress=progress)
            except Exception as e:  # the callable should not raise; if it does, the photo fails, not the daemon
                log.exception("%s: processing raised", photo.path)
                entry = ReportEntry.failed(photo.path, f"internal error: {type(e).__name__}: {e}")
            self._post(Finished(photo, entry, self._stop_event.is_set(), time.monotonic() - started))

    def _run_handoff(self, job: HandoffJob, started: float) -> None:
        def progress(step: int, total: int) -> None:
            self._post(Progress(job.hash, step, total))
            if job.on_progress is not None:
                try:
                    job.on_progress(step, total)
                except Exception:  # the caller went away: stop at the next step
                    job.cancelled.set()

        def should_stop() -> bool:
            return self._stop_event.is_set() or job.cancelled.is_set()

        try:
            entry = job.run(should_stop=should_stop, progress=progress)
        except Exception as e:
            log.exception("%s: processing a hand-off raised", job.path)
            entry = ReportEntry.failed(job.path, f"internal error: {type(e).__name__}: {e}")
        self._post(HandoffFinished(job, entry, time.monotonic() - started))


# --- the controller ------------------------------------------------------------------------------


@dataclass
class ControllerOptions:
    roots: Sequence[Path]
    matcher: Matcher
    settle_seconds: float = 2.0
    max_attempts: int = 3
    backoff_seconds: float = 60.0
    stop_grace: float = 4.0
    #: what `status` reports under "models" (targets, device); filled in by the app
    models: dict[str, Any] = field(default_factory=dict)


class Controller:
    def __init__(
        self,
        ledger_path: Path,
        process: ProcessPhoto,
        options: ControllerOptions,
        *,
        recent_file: Callable[[Path], None] | None = None,
    ) -> None:
        self.options = options
        self._ledger_path = ledger_path
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._stop_event = threading.Event()  # tells the worker (and scans) to give up
        self._worker = Worker(process, self.send, self._stop_event)
        self._recent_file = recent_file  # files a scan finds still changing go to the debouncer
        self._thread = threading.Thread(target=self._run, name="ghostmesh-controller", daemon=True)
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        # state below: controller thread only
        self._ledger: Ledger | None = None
        self._pause_reasons: set[str] = set()
        self._progress: tuple[int, int] = (0, 0)
        self._started_current: float | None = None
        self._scan_thread: threading.Thread | None = None
        self._scan_pending: set[Path] | None = None  # None: nothing queued; empty set: full rescan
        self._last_problem: str | None = None  # "failed" or "weak" when the last photo was not protected
        self._stopping = False
        self._stop_deadline: float | None = None
        self._last_summary: dict[str, Any] | None = None
        self._handoffs: collections.deque[HandoffJob] = collections.deque()
        self._started_at = time.time()
        self.exited = threading.Event()

    # --- API for the other parts (any thread) ---------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Open the ledger (recovering from a crash), start the worker and the loop."""
        self._worker.start()
        self._thread.start()
        self._ready.wait(timeout)
        if self._start_error is not None:
            raise self._start_error

    def send(self, command: Any) -> None:
        self._inbox.put(command)

    def ask(self, command: Any, timeout: float = 10.0) -> Any:
        """Send a command that carries a reply future and wait for the answer."""
        if self.exited.is_set():
            raise RuntimeError("the daemon is stopping")
        self.send(command)
        return command.reply.result(timeout)

    def status(self, timeout: float = 10.0) -> dict[str, Any]:
        return self.ask(GetStatus(), timeout)

    def pause(self, reason: str = USER) -> None:
        self.send(Pause(reason))

    def resume(self, reason: str = USER) -> None:
        self.send(Resume(reason))

    def rescan(self, folder: Path | None = None) -> None:
        self.send(Rescan(folder))

    def stop(self) -> None:
        self.send(Stop())

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """``listener(summary)`` is called on the controller thread whenever the summary changes
        (the tray uses it). It must be quick and must not call :meth:`ask`."""
        self._listeners.append(listener)

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def arrived_file(self, path: Path) -> None:
        """For the debouncer: ``path`` is complete. Hashes it on the caller's thread (so the loop
        never blocks on a big file) and sends :class:`Arrived`."""
        try:
            st = path.stat()
            digest = content_hash(path)
        except OSError as e:
            log.info("%s: gone or unreadable before it could be queued (%s)", path, e.strerror or e)
            return
        self.send(Arrived(path, st.st_size, st.st_mtime_ns, digest))

    # --- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._ledger = Ledger(self._ledger_path)
            recovered = self._ledger.recover(self.options.max_attempts)
            if recovered:
                log.info("recovered %d photo(s) left half-processed by an earlier run; they are queued again", recovered)
        except BaseException as e:
            self._start_error = e
            self._ready.set()
            self.exited.set()
            return
        self._ready.set()
        try:
            self._loop()
        except Exception:
            log.exception("controller failed")
            raise
        finally:
            self._shutdown()

    def _loop(self) -> None:
        ledger = self._ledger
        assert ledger is not None
        while True:
            if self._stopping and (self._worker.busy_with is None or time.monotonic() >= (self._stop_deadline or 0)):
                if self._worker.busy_with is not None:
                    log.warning("%s: not finished %.0f s after the stop request; abandoning it (it will be "
                                "redone at the next start)", self._worker.busy_with.path, self.options.stop_grace)
                return
            timeout = self._next_timeout()
            try:
                command = self._inbox.get(timeout=timeout)
            except queue.Empty:
                command = None
            if command is not None:
                try:
                    self._handle(command)
                except Exception:
                    log.exception("controller: handling %s failed", type(command).__name__)
                    reply = getattr(command, "reply", None)
                    if reply is not None and not reply.done():
                        reply.set_exception(RuntimeError("internal error; see the daemon's log"))
            if not self._stopping:
                released = ledger.release_due_retries(self.options.max_attempts)
                if released:
                    log.info("retrying %d failed photo(s)", released)
                self._dispatch()
            if not isinstance(command, Progress):
                self._notify()

    def _next_timeout(self) -> float | None:
        if self._stopping:
            return max(0.0, (self._stop_deadline or 0) - time.monotonic())
        assert self._ledger is not None
        due = self._ledger.next_retry_time(self.options.max_attempts)
        return None if due is None else max(0.05, due - time.time())

    def _handle(self, command: Any) -> None:
        ledger = self._ledger
        assert ledger is not None
        if isinstance(command, Arrived):
            self._on_arrived(command)
        elif isinstance(command, Found):
            unknown = []
            for r in command.results:
                if r.error is None and ledger.known_hash(str(r.path), r.size, r.mtime_ns) is None:
                    unknown.append(r)
            command.reply.set_result(unknown)
        elif isinstance(command, Rescan):
            self._request_scan(command.folder)
        elif isinstance(command, ScanDone):
            self._scan_thread = None
            self._start_scan_if_queued()
        elif isinstance(command, Pause):
            if command.reason not in self._pause_reasons:
                log.info("paused (%s)", command.reason)
            self._pause_reasons.add(command.reason)
        elif isinstance(command, Resume):
            if command.reason in self._pause_reasons:
                self._pause_reasons.discard(command.reason)
                log.info("resumed (%s)%s", command.reason,
                         f"; still paused ({', '.join(sorted(self._pause_reasons))})" if self._pause_reasons else "")
        elif isinstance(command, GetStatus):
            command.reply.set_result(self._status())
        elif isinstance(command, Progress):
            busy = self._worker.busy_with
            if busy is not None and busy.hash == command.hash:
                self._progress = (command.step, command.total)
        elif isinstance(command, Finished):
            self._on_finished(command)
        elif isinstance(command, SubmitHandoff):
            if self._stopping:
                command.reply.set_exception(RuntimeError("the daemon is stopping"))
                return
            ahead = len(self._handoffs) + (self._worker.busy_with is not None)
            self._handoffs.extend(command.jobs)
            log.info("hand-off: %d photo(s) queued ahead of the backlog (%d ahead of them)", len(command.jobs), ahead)
            command.reply.set_result(ahead)
        elif isinstance(command, HandoffFinished):
            self._worker.busy_with = None
            self._started_current = None
            self._progress = (0, 0)
            e = command.entry
            log.info("hand-off: %s: %s%s (%.1f s)", command.job.path, e.status,
                     f" -> {e.output}" if e.output else f": {e.reason}" if e.reason else "", command.seconds)
            if command.job.future.done():
                pass
            elif self._stop_event.is_set() and not command.job.cancelled.is_set() and e.status == "skipped":
                # stopped by our own shutdown, not by its caller: the caller protects it itself
                command.job.future.set_exception(RuntimeError("the daemon stopped before the photo was finished"))
            else:
                command.job.future.set_result(e)
        elif isinstance(command, Maintain):
            result = ledger.maintain()
            log.info("ledger maintenance: %s", result)
            command.reply.set_result(result)
        elif isinstance(command, Stop):
            if not self._stopping:
                log.info("stopping")
                self._stopping = True
                self._stop_deadline = time.monotonic() + self.options.stop_grace
                self._stop_event.set()
        else:
            raise TypeError(f"unknown command {command!r}")

    def _on_arrived(self, a: Arrived) -> None:
        assert self._ledger is not None
        photo, new = self._ledger.arrive(str(a.path), a.size, a.mtime_ns, a.hash)
        if new:
            log.info("queued %s", a.path)
        elif photo.path != str(a.path) and photo.state in ("done", "weak", "skipped"):
            log.info("%s: same content as %s (already %s); not redone", a.path, photo.path, photo.state)

    def _dispatch(self) -> None:
        """Hand the next pending photo to the worker, if it is idle and nothing holds us."""
        ledger = self._ledger
        assert ledger is not None
        # Photos a caller waits for (hand-offs) first, even while paused: the user asked for them.
        while self._worker.busy_with is None and self._handoffs and not self._stopping:
            job = self._handoffs.popleft()
            if job.cancelled.is_set():
                job.future.cancel()
                continue
            self._progress = (0, 0)
            self._started_current = time.time()
            log.info("processing %s (hand-off)", job.path)
            self._worker.submit(job)
        while self._worker.busy_with is None and not self._pause_reasons and not self._stopping:
            photo = ledger.next_pending()
            if photo is None:
                return
            if not Path(photo.path).is_file():
                ledger.mark_skipped(photo.hash, "the file was removed or renamed before it was processed")
                log.info("%s: gone before it was processed", photo.path)
                continue
            ledger.mark_processing(photo.hash)
            self._progress = (0, 0)
            self._started_current = time.time()
            log.info("processing %s", photo.path)
            self._worker.submit(photo)

    def _judge(self, f: Finished) -> str:
        """What a finished attempt means for the ledger: "done", "weak", "failed", "skipped" or "requeue".

        A weak photo was already retried once by the processor (``cli.run.make_processor``); it is
        final like a done one, shown in the counts and the last failures, and redone only when the
        file changes.
        """
        if f.entry.status == "ok":
            return "done"
        if f.entry.status == "weak":
            return "weak"
        if f.stopped:
            return "requeue"  # abandoned because we are stopping: not the photo's fault
        return "skipped" if f.entry.status == "skipped" else "failed"

    def _on_finished(self, f: Finished) -> None:
        ledger = self._ledger
        assert ledger is not None
        self._worker.busy_with = None
        self._started_current = None
        self._progress = (0, 0)
        verdict = self._judge(f)
        entry = f.entry
        if verdict == "done":
            ledger.mark_done(f.photo.hash, entry.output, entry.engine_version or ENGINE_VERSION, entry.to_dict())
            self._last_problem = None
            log.info("protected %s -> %s (%.1f s)", f.photo.path, entry.output, f.seconds)
        elif verdict == "weak":
            reason = entry.reason or "not protected within its budget"
            ledger.mark_weak(f.photo.hash, entry.output, entry.engine_version or ENGINE_VERSION, reason, entry.to_dict())
            self._last_problem = "weak"
            if entry.output:
                log.warning("%s: weak, kept at your request (output.keep_weak) as %s: %s", f.photo.path,
                            entry.output, reason)
            else:
                log.warning("%s: weak, nothing written (output.keep_weak writes it anyway): %s", f.photo.path, reason)
        elif verdict == "requeue":
            ledger.requeue(f.photo.hash)
            log.info("%s: abandoned (stopping); it will be redone at the next start", f.photo.path)
        elif verdict == "skipped":
            ledger.mark_skipped(f.photo.hash, entry.reason or "skipped")
            log.info("%s: skipped: %s", f.photo.path, entry.reason)
        else:
            row = ledger.photo(f.photo.hash)
            attempts = row.attempts if row else 1
            retry_at = None
            if attempts < self.options.max_attempts:
                retry_at = time.time() + self.options.backoff_seconds * 4 ** (attempts - 1)
            reason = entry.reason or "failed"
            ledger.mark_failed(f.photo.hash, reason, retry_at, entry.to_dict())
            self._last_problem = "failed"
            when = f"; retry in {retry_at - time.time():.0f} s" if retry_at else "; giving up"
            log.warning("%s: failed (attempt %d of %d): %s%s", f.photo.path, attempts,
                        self.options.max_attempts, reason, when)

    # --- scanning ------------------------------------------------------------------------------

    def _request_scan(self, folder: Path | None) -> None:
        if folder is None:
            self._scan_pending = set()  # a full scan subsumes any folder scans
        elif self._scan_pending is None:
            self._scan_pending = {folder}
        elif self._scan_pending:
            self._scan_pending.add(folder)
        self._start_scan_if_queued()

    def _start_scan_if_queued(self) -> None:
        if self._scan_thread is not None or self._scan_pending is None or self._stopping:
            return
        folders = sorted(self._scan_pending) if self._scan_pending else None
        self._scan_pending = None
        self._scan_thread = threading.Thread(
            target=self._scan, args=(folders,), name="ghostmesh-scan", daemon=True
        )
        self._scan_thread.start()

    def _scan(self, folders: list[Path] | None) -> None:
        """Runs on the scan thread: walk, ask which files are new, hash those, send them."""
        try:
            started = time.monotonic()
            n_new = 0
            targets = [(r, r) for r in self.options.roots] if folders is None else [
                (root, f) for f in folders if (root := root_of(f, self.options.roots)) is not None
            ]
            for root, top in targets:
                batch: list[ScanResult] = []
                for result in scan(root, self.options.matcher, top=top):
                    if self._stop_event.is_set():
                        return
                    if result.error:
                        log.warning("%s: %s", result.path, result.error)
                        continue
                    batch.append(result)
                    if len(batch) >= 256:
                        n_new += self._scan_batch(batch)
                        batch = []
                if batch:
                    n_new += self._scan_batch(batch)
            what = "all watched folders" if folders is None else ", ".join(map(str, folders))
            log.info("scanned %s in %.1f s: %d new or changed file(s)", what, time.monotonic() - started, n_new)
        except Exception:
            log.exception("scan failed")
        finally:
            self.send(ScanDone())

    def _scan_batch(self, batch: list[ScanResult]) -> int:
        try:
            unknown: list[ScanResult] = self.ask(Found(batch), timeout=60)
        except Exception:  # stopping
            return 0
        recent_cutoff = time.time_ns() - int(self.options.settle_seconds * 1e9)
        for r in unknown:
            if self._stop_event.is_set():
                break
            if r.mtime_ns > recent_cutoff and self._recent_file is not None:
                self._recent_file(r.path)  # may still be arriving: the debouncer decides
                continue
            try:
                digest = content_hash(r.path)
            except OSError as e:
                log.warning("%s: cannot read: %s", r.path, e.strerror or e)
                continue
            self.send(Arrived(r.path, r.size, r.mtime_ns, digest))
        return len(unknown)

    # --- status --------------------------------------------------------------------------------

    def _state(self) -> str:
        if self._pause_reasons:
            return "paused"
        if self._worker.busy_with is not None:
            return "working"
        return "error" if self._last_problem else "idle"

    def _summary(self) -> dict[str, Any]:
        assert self._ledger is not None
        busy = self._worker.busy_with
        counts = self._ledger.counts()
        return {
            "state": self._state(),
            "paused": bool(self._pause_reasons),
            "pause_reasons": sorted(self._pause_reasons),
            "queue": counts["pending"],
            "handoffs": len(self._handoffs) + isinstance(busy, HandoffJob),
            "done": counts["done"],
            "weak": counts["weak"],
            "failed": counts["failed"],
            "last_problem": self._last_problem,
            "current": busy.path if busy else None,
        }

    def _status(self) -> dict[str, Any]:
        assert self._ledger is not None
        busy = self._worker.busy_with
        counts = self._ledger.counts()
        current = None
        if busy is not None:
            step, total = self._progress
            current = {"path": busy.path, "step": step, "total": total,
                       "seconds": round(time.time() - (self._started_current or time.time()), 1)}
        return {
            **self._summary(),
            "current": current,
            "counts": counts,
            "last_failures": self._ledger.recent_failures(5),
            "scanning": self._scan_thread is not None,
            "folders": [str(r) for r in self.options.roots],
            "models": self.options.models,
            "version": __version__,
            "engine_version": ENGINE_VERSION,
            "uptime_seconds": round(time.time() - self._started_at, 1),
        }

    def _notify(self) -> None:
        if not self._listeners or self._ledger is None:
            return
        summary = self._summary()
        if summary == self._last_summary:
            return
        self._last_summary = summary
        log.debug("summary: %s", summary)
        for listener in self._listeners:
            try:
                listener(summary)
            except Exception:
                log.exception("status listener failed")

    def _shutdown(self) -> None:
        self._stop_event.set()
        self._worker.close()
        # Answer anything still waiting, so no caller hangs on a reply future.
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                break
            reply = getattr(command, "reply", None)
            if reply is not None and not reply.done():
                reply.set_exception(RuntimeError("the daemon is stopping"))
        while self._handoffs:
            job = self._handoffs.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the daemon is stopping"))
        busy = self._worker.busy_with
        if isinstance(busy, HandoffJob) and not busy.future.done():
            busy.future.set_exception(RuntimeError("the daemon stopped before the photo was finished"))
        if self._ledger is not None:
            self._ledger.close()
        self.exited.set()
