"""The control channel: JSON lines over a Unix socket that only this user can reach.

The socket lives in the user's runtime folder (``$XDG_RUNTIME_DIR/ghostmesh``, mode 0700) and is
created 0600; on Linux the server also checks the peer's uid (SO_PEERCRED). It is never a network
socket. One request per connection: ``{"cmd": "status"}`` -> ``{"ok": true, "status": {...}}``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import struct
import threading
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("ghostmesh.daemon")

COMMANDS = ("status", "pause", "resume")
MAX_REQUEST = 64 * 1024


class ControlUnavailable(Exception):
    """No daemon answers on the socket."""


def _peer_uid(sock: socket.socket) -> int | None:
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class _Handler(socketserver.StreamRequestHandler):
    timeout = 10

    def handle(self) -> None:
        server: ControlServer = self.server  # type: ignore[assignment]
        uid = _peer_uid(self.connection)
        if uid is not None and uid != os.getuid():
            log.warning("control socket: refused a connection from uid %d", uid)
            return
        line = self.rfile.readline(MAX_REQUEST)
        try:
            request = json.loads(line)
            cmd = request["cmd"]
            if cmd not in COMMANDS:
                raise ValueError(f"unknown command {cmd!r} (known: {', '.join(COMMANDS)})")
            reply = {"ok": True, **server.answer(cmd)}
        except (ValueError, KeyError, TypeError) as e:
            reply = {"ok": False, "error": f"bad request: {e}"}
        except Exception as e:  # the controller is stopping, or timed out
            reply = {"ok": False, "error": str(e) or type(e).__name__}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: Path, answer: Callable[[str], dict[str, Any]]) -> None:
        self.answer = answer
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        # The single-instance lock is held, so a socket file here is a stale one from a crash.
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        old = os.umask(0o177)
        try:
            super().__init__(str(self.path), _Handler)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # poll_interval bounds how long shutdown() waits; the select itself costs nothing while idle.
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.5}, name="ghostmesh-control", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(2)
        self.server_close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def request(path: Path, cmd: str, timeout: float = 15.0) -> dict[str, Any]:
    """Send one command to the running daemon and return its reply."""
    if not hasattr(socket, "AF_UNIX"):
        raise ControlUnavailable("the control channel needs Unix sockets, which this platform lacks")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlUnavailable(f"no daemon is running (nothing answers at {path}); start it with `ghostmesh run`") from None
        sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        raise ControlUnavailable(f"the daemon at {path} did not answer within {timeout:g} s") from None
    finally:
        sock.close()
    if not data:
        raise ControlUnavailable(f"the daemon at {path} closed the connection without answering")
    return json.loads(data)
