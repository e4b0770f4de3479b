"""Batch mode (``ghostmesh backfill``): protect a whole library on a Ray cluster, resumably.

Why Ray Core actors and not Ray Data with an actor pool:

* The unit of work is one photo that takes seconds to minutes, and what matters is what happens to
  *that* photo: its ledger row is written the moment its result comes back, a worker that dies is
  restarted by Ray and the same photo retried on it (``max_restarts`` / ``max_task_retries``), and
  each worker is asked once whether it sees the driver's files (``--transfer auto``) and then sent
  paths or bytes. Ray Data's streaming executor batches rows, hides which worker holds which row and
  retries at the block level; bending it to per-photo acknowledgements would rebuild this loop.
* Back-pressure is one line with actors: at most one photo in flight per worker, collected with
  ``ray.wait``; the walk is lazy, so a million-file folder is never a list of paths or of futures.
* ``ray`` (core) alone is enough: Ray Data would pull pyarrow and pandas into the ``cluster`` extra.

The driver (:mod:`.driver`) walks the folders, keys each photo by its SHA-256 and destination in a
SQLite ledger (:mod:`.ledger`, the daemon's design), skips what is finished, and hands the rest to
:class:`.worker.BatchWorker` actors, each holding one loaded
:class:`~ghostmesh_daemon.pipeline.Protector`, so a photo is protected exactly as ``protect`` does it.

Importing this package does not import ``ray``; :func:`.driver.run_backfill` does, when it needs it.
"""

from .driver import BackfillOptions, Summary, run_backfill, walk

__all__ = ["BackfillOptions", "Summary", "run_backfill", "walk"]
