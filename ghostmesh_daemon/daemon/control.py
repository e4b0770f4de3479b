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
#: Commands answered with a stream of JSON lines (``protect``: the hand-off of ``ghostmesh protect``).
STREAM_COMMANDS = ("protect",)
MAX_REQUEST = 1024 * 1024


class ControlUnavailable(Exception):
    """No daemon answers on the socket."""


def peer_credentials(sock: socket.socket) -> tuple[int, int, int] | None:
    """``(pid, uid, gid)`` of the process at the other end (Linux SO_PEERCRED), or ``None``."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def _peer_uid(sock: socket.socket) -> int | None:
    creds = peer_credentials(sock)
    return None if creds is None else creds[1]


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
            if cmd in STREAM_COMMANDS and server.stream is not None:
                self._stream(server, request)
                return
            if cmd not in COMMANDS:
                raise ValueError(f"unknown command {cmd!r} (known: {', '.join(COMMANDS)})")
            reply = {"ok": True, **server.answer(cmd)}
        except (ValueError, KeyError, TypeError) as e:
            reply = {"ok": False, "error": f"bad request: {e}"}
        except Exception as e:  # the controller is stopping, or timed out
            reply = {"ok": False, "error": str(e) or type(e).__name__}
        self.wfile.write(json.dumps(reply).encode() + b"\n")

    def _stream(self, server: "ControlServer", request: dict[str, Any]) -> None:
        """Answer with one JSON line per event until the streaming handler returns. A client that
        goes away makes ``send`` raise :class:`BrokenPipeError`, which the handler treats as a
        cancellation."""
        # Writes may wait on a slow reader, but never for minutes: the client reads continuously.
        self.connection.settimeout(60)

        def send(event: dict[str, Any]) -> None:
            self.wfile.write(json.dumps(event).encode() + b"\n")
            self.wfile.flush()

        try:
            server.stream(request, peer_credentials(self.connection), send)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            log.info("control socket: the client of a %s request went away", request.get("cmd"))


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: Path, answer: Callable[[str], dict[str, Any]],
                 stream: Callable[[dict[str, Any], tuple[int, int, int] | None, Callable[[dict[str, Any]], None]], None]
                 | None = None) -> None:
        self.answer = answer
        #: ``stream(request, (pid, uid, gid) or None, send)`` answers the streaming commands
        self.stream = stream
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
