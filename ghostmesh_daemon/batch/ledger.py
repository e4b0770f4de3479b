"""The backfill ledger: what a batch run has done, in SQLite (WAL) on the driver, keyed by content.

The same design as the daemon's ledger (``ghostmesh_daemon/daemon/ledger.py``): one row per photo
keyed by its SHA-256, a state (pending, processing, done, weak, failed, skipped), attempts, the last
error, the output and the photo's report entry, and a ``files`` table mapping a path with its size
and mtime to the hash last read there, so a second run over an unchanged library reads no photo.

One difference, and it is why this is not the daemon's ``Ledger``: a row is keyed by the content
*and the destination* (``hash, dest``). The daemon protects each content once, wherever it shows up;
a backfill promises a protected copy beside every photo, so a second copy of the same photo in
another folder gets its own. A photo that changes has a new hash and is done again; one that moves
has a new destination and is done again (its old copy is not beside it any more).

Crash safety: every state change is one committed transaction (a ``kill -9`` of the driver loses at
most the photo it was recording; that photo's row stays ``processing`` and is done again). Rows left
``processing`` are found by :meth:`BatchLedger.recover` at the start of the next run. Only the
driver's thread touches a ledger (one connection); :func:`exclusive` keeps a second driver away.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

SCHEMA_VERSION = 1
STATES = ("pending", "processing", "done", "weak", "failed", "skipped")
#: States a later run does not redo (``failed`` is retried until its attempts run out).
FINAL = ("done", "weak", "skipped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS photos (
    hash TEXT NOT NULL,
    dest TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'processing', 'done', 'weak', 'failed', 'skipped')),
    attempts INTEGER NOT NULL DEFAULT 0,
    interrupted INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    output TEXT,
    engine_version TEXT,
    report TEXT,
    run TEXT,
    seen INTEGER,
    done_run TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (hash, dest)
);
CREATE INDEX IF NOT EXISTS photos_run ON photos (run, seen);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    started REAL NOT NULL,
    finished REAL,
    argv TEXT,
    counts TEXT
);
"""

_COLUMNS = ("hash, dest, path, size, mtime_ns, state, attempts, interrupted, last_error, output, engine_version, report, "
            "done_run")


@dataclass(frozen=True)
class Row:
    hash: str
    dest: str
    path: str
    size: int
    mtime_ns: int
    state: str
    attempts: int
    interrupted: bool
    last_error: str | None
    output: str | None
    engine_version: str | None
    report: str | None
    done_run: str | None  # the run that finished it

    def entry_dict(self) -> dict[str, Any] | None:
        return json.loads(self.report) if self.report else None


class LedgerBusy(RuntimeError):
    """Another backfill holds this ledger."""


@contextlib.contextmanager
def exclusive(ledger_path: Path) -> Iterator[None]:
    """Hold ``<ledger>.lock`` (an OS lock, released when the process dies, even by ``kill -9``)."""
    lock_path = Path(f"{ledger_path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: no advisory locks here; one driver per ledger is the user's job
            pass
        except OSError:
            raise LedgerBusy(f"{ledger_path}: another backfill is using this ledger (its lock {lock_path} is held)") from None
        yield
    finally:
        os.close(fd)


class BatchLedger:
    def __init__(self, path: Path, *, clock=time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed transaction survives the process being killed (only a power
        # loss may drop the last ones, and those photos are simply done again).
        self._db.execute("PRAGMA synchronous=NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: backfill ledger schema {version} is newer than this ghostmesh ({SCHEMA_VERSION})")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._seen = 0

    def close(self) -> None:
        self._db.close()

    # --- runs ---------------------------------------------------------------------------------

    def start_run(self, argv: list[str] | None = None) -> str:
        run = uuid.uuid4().hex
        self._db.execute("INSERT INTO runs (id, started, argv) VALUES (?, ?, ?)",
                         (run, self._clock(), json.dumps(argv or [])))
        self._seen = 0
        return run

    def finish_run(self, run: str, counts: dict[str, int]) -> None:
        self._db.execute("UPDATE runs SET finished = ?, counts = ? WHERE id = ?", (self._clock(), json.dumps(counts), run))

    # --- reading ------------------------------------------------------------------------------

    def row(self, content_hash: str, dest: str) -> Row | None:
        r = self._db.execute(f"SELECT {_COLUMNS} FROM photos WHERE hash = ? AND dest = ?", (content_hash, dest)).fetchone()
        return Row(*r) if r else None

    def known_hash(self, path: str, size: int, mtime_ns: int) -> str | None:
        """The hash last read at ``path`` if the file is unchanged since (same size and mtime)."""
        r = self._db.execute("SELECT hash FROM files WHERE path = ? AND size = ? AND mtime_ns = ?",
                             (path, size, mtime_ns)).fetchone()
        return r[0] if r else None

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        counts.update(self._db.execute("SELECT state, count(*) FROM photos GROUP BY state").fetchall())
        return counts

    def run_rows(self, run: str) -> Iterator[Row]:
        """This run's photos in the order they were met, streamed (a million rows never sit in memory)."""
        cur = self._db.execute(f"SELECT {_COLUMNS} FROM photos WHERE run = ? ORDER BY seen", (run,))
        while batch := cur.fetchmany(256):
            for r in batch:
                yield Row(*r)

    # --- writing ------------------------------------------------------------------------------

    def record_file(self, path: str, size: int, mtime_ns: int, content_hash: str) -> None:
        self._db.execute(
            "INSERT INTO files (path, size, mtime_ns, hash) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, hash = excluded.hash",
            (path, size, mtime_ns, content_hash),
        )

    def arrive(self, run: str, path: str, dest: str, size: int, mtime_ns: int, content_hash: str) -> Row:
        """Record that this run met ``path`` (holding ``content_hash``, protected to ``dest``); returns its row."""
        now = self._clock()
        self._seen += 1
        with self._transaction():
            self.record_file(path, size, mtime_ns, content_hash)
            self._db.execute(
                "INSERT INTO photos (hash, dest, path, size, mtime_ns, state, run, seen, created, updated) "
                "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?) "
                "ON CONFLICT (hash, dest) DO UPDATE SET path = excluded.path, run = excluded.run, seen = excluded.seen",
                (content_hash, dest, path, size, mtime_ns, run, self._seen, now, now),
            )
        return self.row(content_hash, dest)  # type: ignore[return-value]

    def mark_processing(self, content_hash: str, dest: str) -> None:
        self._db.execute(
            "UPDATE photos SET state = 'processing', attempts = attempts + 1, updated = ? WHERE hash = ? AND dest = ?",
            (self._clock(), content_hash, dest),
        )

    def finish(self, content_hash: str, dest: str, entry: dict[str, Any], run: str) -> None:
        """Record a photo's report entry: ok -> done, weak, skipped (final) or failed (retried later)."""
        state = {"ok": "done"}.get(entry["status"], entry["status"])
        if state not in STATES:
            raise ValueError(f"unknown status {entry['status']!r}")
        self._db.execute(
            "UPDATE photos SET state = ?, output = ?, last_error = ?, engine_version = ?, report = ?, interrupted = 0, "
            "done_run = ?, updated = ? WHERE hash = ? AND dest = ?",
            (state, entry.get("output"), entry.get("reason"), entry.get("engine_version"),
             json.dumps(entry, allow_nan=False), run, self._clock(), content_hash, dest),
        )

    def requeue(self, content_hash: str, dest: str) -> None:
        """Back to pending, the abandoned attempt not counted (the user stopped the run: not the photo's fault)."""
        self._db.execute(
            "UPDATE photos SET state = 'pending', attempts = max(attempts - 1, 0), interrupted = 1, updated = ? "
            "WHERE hash = ? AND dest = ? AND state = 'processing'",
            (self._clock(), content_hash, dest),
        )

    def recover(self, max_attempts: int) -> int:
        """After a driver that was killed: rows left ``processing`` go back to ``pending`` (marked
        ``interrupted``: their destination may hold a stale temporary). The interrupted attempt
        counts, so a photo that kills the run every time ends up failed instead of killing it forever."""
        now = self._clock()
        with self._transaction():
            rows = self._db.execute("SELECT hash, dest, attempts, report FROM photos WHERE state = 'processing'").fetchall()
            for h, d, attempts, _ in rows:
                if attempts >= max_attempts:
                    reason = f"the run stopped abruptly while processing it {attempts} times"
                    self._db.execute(
                        "UPDATE photos SET state = 'failed', last_error = ?, interrupted = 1, updated = ? WHERE hash = ? AND dest = ?",
                        (reason, now, h, d))
                else:
                    self._db.execute("UPDATE photos SET state = 'pending', interrupted = 1, updated = ? "
                                     "WHERE hash = ? AND dest = ?", (now, h, d))
        return len(rows)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
