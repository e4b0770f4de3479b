"""The watch-folder daemon (``ghostmesh run``).

One :class:`~.controller.Controller` owns all state (the queue, which lives in the ledger; the pause
reasons; the one SQLite connection) and runs one loop. Everything else only sends it commands: the
watcher (through the debouncer), the scanner, the scheduler, the tray and the control socket.
:mod:`.app` wires the parts together.
"""
