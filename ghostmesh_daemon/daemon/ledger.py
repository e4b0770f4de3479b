"""The ledger: what the daemon has seen and done, in SQLite (WAL), keyed by content.

Two tables. ``photos`` has one row per distinct content (SHA-256): its state (pending, processing,
done, weak, failed, skipped), attempts, last error, output, engine version, timestamps. ``weak`` is
final like ``done`` (a changed file has a new hash and is processed again): its copy did not reach
its goals within the budgets, so it was not written (unless the user keeps weak copies), and the
reason says why. A renamed or
copied-back photo has the same hash, so it is not redone; a changed photo has a new hash, so it is.
``files`` maps a path with its size and mtime to the hash last read there, so a rescan of an
unchanged folder reads no file contents.

The queue *is* the set of pending rows, in arrival order: it survives a crash, and memory stays
bounded however many photos arrive. Only the controller's thread touches a Ledger (one connection).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 2
STATES = ("pending", "processing", "done", "weak", "failed", "skipped")

_PHOTOS = """
CREATE TABLE IF NOT EXISTS {name} (
    hash TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'processing', 'done', 'weak', 'failed', 'skipped')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    output TEXT,
    engine_version TEXT,
    report TEXT,
    queued_at REAL NOT NULL,
    next_attempt REAL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
"""

_SCHEMA = _PHOTOS.format(name="photos") + """
CREATE INDEX IF NOT EXISTS photos_queue ON photos (state, queued_at);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_hash ON files (hash);
"""


@dataclass(frozen=True)
class Photo:
    hash: str
    path: str
    size: int
    mtime_ns: int
    state: str
    attempts: int
    last_error: str | None
    output: str | None
    engine_version: str | None
    queued_at: float
    next_attempt: float | None
    updated: float


_COLUMNS = "hash, path, size, mtime_ns, state, attempts, last_error, output, engine_version, queued_at, next_attempt, updated"


class Ledger:
    def __init__(self, path: Path, *, clock=time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: ledger schema {version} is newer than this ghostmesh ({SCHEMA_VERSION})")
        if version == 1:
            self._migrate_from_1()
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _migrate_from_1(self) -> None:
        """Schema 1 -> 2: the state check gains ``weak``. SQLite cannot change a CHECK in place, so
        the table is rebuilt, in one transaction (a crash leaves schema 1, intact)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(_PHOTOS.format(name="photos_v2"))
            self._db.execute("INSERT INTO photos_v2 SELECT * FROM photos")
            self._db.execute("DROP TABLE photos")
            self._db.execute("ALTER TABLE photos_v2 RENAME TO photos")
            self._db.execute("CREATE INDEX IF NOT EXISTS photos_queue ON photos (state, queued_at)")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()

    # --- reading ------------------------------------------------------------------------------

    def _photo(self, where: str, args: Iterable[Any]) -> Photo | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM photos WHERE {where}", tuple(args)).fetchone()
        return Photo(*row) if row else None

    def photo(self, content_hash: str) -> Photo | None:
        return self._photo("hash = ?", (content_hash,))

    def known_hash(self, path: str, size: int, mtime_ns: int) -> str | None:
        """The hash last read at ``path`` if the file is unchanged since (same size and mtime)."""
        row = self._db.execute(
            "SELECT hash FROM files WHERE path = ? AND size = ? AND mtime_ns = ?", (path, size, mtime_ns)
        ).fetchone()
        return row[0] if row else None

    def next_pending(self) -> Photo | None:
        return self._photo("state = 'pending' ORDER BY queued_at, rowid LIMIT 1", ())

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        counts.update(self._db.execute("SELECT state, count(*) FROM photos GROUP BY state").fetchall())
        return counts

    def recent_failures(self, limit: int = 5) -> list[dict[str, Any]]:
        """The latest photos that failed or came back weak, newest first, each with its state."""
        rows = self._db.execute(
            "SELECT path, state, last_error, attempts, updated FROM photos WHERE state IN ('failed', 'weak') "
            "ORDER BY updated DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [{"path": p, "state": s, "reason": e, "attempts": a, "when": u} for p, s, e, a, u in rows]

    def next_retry_time(self, max_attempts: int) -> float | None:
        row = self._db.execute(
            "SELECT min(next_attempt) FROM photos WHERE state = 'failed' AND attempts < ? "
            "AND next_attempt IS NOT NULL",
            (max_attempts,),
        ).fetchone()
        return row[0]

    # --- writing ------------------------------------------------------------------------------

    def record_file(self, path: str, size: int, mtime_ns: int, content_hash: str) -> None:
        self._db.execute(
            "INSERT INTO files (path, size, mtime_ns, hash) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, hash = excluded.hash",
            (path, size, mtime_ns, content_hash),
        )

    def arrive(self, path: str, size: int, mtime_ns: int, content_hash: str) -> tuple[Photo, bool]:
        """Record that ``path`` holds ``content_hash``. Returns the photo row and whether it is new
        (queued now). A pending photo seen under a new name follows the new name."""
        now = self._clock()
        self.record_file(path, size, mtime_ns, content_hash)
        existing = self.photo(content_hash)
        if existing is None:
            self._db.execute(
                "INSERT INTO photos (hash, path, size, mtime_ns, state, queued_at, created, updated) "
                "VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
                (content_hash, path, size, mtime_ns, now, now, now),
            )
            return self.photo(content_hash), True  # type: ignore[return-value]
        if existing.state == "pending" and existing.path != path and not Path(existing.path).exists():
            self._db.execute("UPDATE photos SET path = ?, updated = ? WHERE hash = ?", (path, now, content_hash))
            existing = self.photo(content_hash)
        return existing, False  # type: ignore[return-value]

    def _set(self, content_hash: str, **values: Any) -> None:
        values["updated"] = self._clock()
        cols = ", ".join(f"{k} = ?" for k in values)
        self._db.execute(f"UPDATE photos SET {cols} WHERE hash = ?", (*values.values(), content_hash))

    def mark_processing(self, content_hash: str) -> None:
        self._db.execute(
            "UPDATE photos SET state = 'processing', attempts = attempts + 1, updated = ? WHERE hash = ?",
            (self._clock(), content_hash),
        )

    def mark_done(self, content_hash: str, output: str | None, engine_version: str, report: dict | None = None) -> None:
        self._set(content_hash, state="done", output=output, engine_version=engine_version, last_error=None,
                  next_attempt=None, report=json.dumps(report) if report is not None else None)

    def mark_weak(self, content_hash: str, output: str | None, engine_version: str, reason: str,
                  report: dict | None = None) -> None:
        """Final, like done: not retried unless the file changes (a new hash). ``output`` is the weak
        copy when the user keeps them, else ``None``."""
        self._set(content_hash, state="weak", output=output, engine_version=engine_version, last_error=reason,
                  next_attempt=None, report=json.dumps(report) if report is not None else None)

    def mark_failed(self, content_hash: str, error: str, retry_at: float | None, report: dict | None = None) -> None:
        self._set(content_hash, state="failed", last_error=error, next_attempt=retry_at,
                  report=json.dumps(report) if report is not None else None)

    def mark_skipped(self, content_hash: str, reason: str) -> None:
        self._set(content_hash, state="skipped", last_error=reason, next_attempt=None)

    def requeue(self, content_hash: str) -> None:
        """Back to pending at its old place in the queue, the abandoned attempt not counted."""
        self._db.execute(
            "UPDATE photos SET state = 'pending', attempts = max(attempts - 1, 0), updated = ? WHERE hash = ?",
            (self._clock(), content_hash),
        )

    def recover(self, max_attempts: int) -> int:
        """After a crash or kill: rows left in ``processing`` go back to ``pending``. The interrupted
        attempt still counts, so a photo that crashes the process every time ends up failed instead
        of crashing it forever."""
        now = self._clock()
        self._db.execute(
            "UPDATE photos SET state = 'failed', next_attempt = NULL, updated = ?, last_error = "
            "'the daemon stopped abruptly while processing it ' || attempts || ' times' "
            "WHERE state = 'processing' AND attempts >= ?",
            (now, max_attempts),
        )
        cur = self._db.execute(
            "UPDATE photos SET state = 'pending', updated = ? WHERE state = 'processing'", (now,)
        )
        return cur.rowcount

    def release_due_retries(self, max_attempts: int) -> int:
        """Failed photos whose backoff has passed and that have attempts left go back to pending."""
        now = self._clock()
        cur = self._db.execute(
            "UPDATE photos SET state = 'pending', next_attempt = NULL, queued_at = ?, updated = ? "
            "WHERE state = 'failed' AND attempts < ? AND next_attempt IS NOT NULL AND next_attempt <= ?",
            (now, now, max_attempts, now),
        )
        return cur.rowcount

    def maintain(self) -> dict[str, int]:
        """Forget paths that no longer exist (their photos' rows stay: the content is still known),
        then checkpoint and compact the WAL."""
        gone = [p for (p,) in self._db.execute("SELECT path FROM files").fetchall() if not Path(p).exists()]
        self._db.executemany("DELETE FROM files WHERE path = ?", ((p,) for p in gone))
        self._db.execute("PRAGMA optimize")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {"forgotten_paths": len(gone)}
