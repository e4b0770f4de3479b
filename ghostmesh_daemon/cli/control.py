"""``ghostmesh status``, ``ghostmesh pause``, ``ghostmesh resume``: talk to the running daemon over
its local control socket (see :mod:`ghostmesh_daemon.daemon.control`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .env import Env, ExitStatus

HELP = {
    "status": "show what the daemon is doing: queue, current photo, counts, recent failures and weak photos",
    "pause": "hold new photos (the current one finishes); nothing is lost",
    "resume": "process held photos again",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, text in HELP.items():
        p = subparsers.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
        p.set_defaults(handler=_handler(name))


def _handler(cmd: str):
    def handle(args: argparse.Namespace, env: Env) -> ExitStatus:
        from ..daemon import paths
        from ..daemon.control import ControlUnavailable, request

        try:
            reply = request(paths.socket_path(), cmd)
        except ControlUnavailable as e:
            env.stderr.write(f"ghostmesh {cmd}: {e}\n")
            return ExitStatus.ERROR
        if not reply.get("ok"):
            env.stderr.write(f"ghostmesh {cmd}: the daemon answered: {reply.get('error')}\n")
            return ExitStatus.ERROR
        status = reply["status"]
        if args.json:
            env.stdout.write(json.dumps(status, indent=2) + "\n")
        else:
            env.stdout.write(format_status(status, cmd))
        return ExitStatus.OK

    return handle


def format_status(s: dict[str, Any], cmd: str = "status") -> str:
    lines = []
    if cmd == "pause":
        lines.append("paused: new photos are held until `ghostmesh resume`")
    elif cmd == "resume":
        lines.append("resumed" + (f" (still held by: {', '.join(s['pause_reasons'])})" if s["pause_reasons"] else ""))
    state = s["state"] + (f" ({', '.join(s['pause_reasons'])})" if s["pause_reasons"] else "")
    lines.append(f"state:    {state}")
    cur = s.get("current")
    if cur:
        prog = f" step {cur['step']}/{cur['total']}" if cur.get("total") else ""
        lines.append(f"current:  {cur['path']}{prog} ({cur['seconds']:.0f} s)")
    c = s["counts"]
    lines.append(f"queue:    {s['queue']} waiting" + (" (scanning)" if s.get("scanning") else ""))
    if s.get("handoffs"):
        lines.append(f"hand-off: {s['handoffs']} photo(s) from `ghostmesh protect` or an editor, ahead of the queue")
    lines.append(f"done:     {c['done']} protected, {c.get('weak', 0)} weak (not protected), {c['failed']} failed, "
                 f"{c['skipped']} skipped")
    models = s.get("models") or {}
    if models:
        lines.append(f"models:   {', '.join(models.get('targets', []))} on {models.get('device', '?')}"
                     f" ({models.get('preset', '?')}, {models.get('steps', '?')} steps)")
    lines.append(f"watching: {', '.join(s['folders'])}")
    for f in s.get("last_failures") or []:
        if f.get("state") == "weak":
            lines.append(f"weak:     {Path(f['path'])}: {f['reason']}")
        else:
            lines.append(f"failed:   {Path(f['path'])}: {f['reason']} (attempt {f['attempts']})")
    return "\n".join(lines) + "\n"
