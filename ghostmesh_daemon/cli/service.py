"""``ghostmesh service install|uninstall|status [--dry-run]``: start the daemon at login.

The work is in :mod:`ghostmesh_daemon.service_install`; this module only prints. Every action says
which files it touched and how to undo it, because a login item the user cannot find is worse than
none. ``status`` exits 0 when the service is installed and current, 1 otherwise (scriptable).
"""

from __future__ import annotations

import argparse

from .. import service_install as si
from .env import Env, ExitStatus


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "service",
        help="start the daemon when you log in (install, uninstall, status)",
        description="Start the Ghost Mesh daemon when you log in: a systemd user unit on Linux, "
        "a LaunchAgent on macOS, a Startup-folder entry on Windows. It runs the Python "
        "that runs this command.",
    )
    actions = parser.add_subparsers(dest="service_action", metavar="ACTION", parser_class=type(parser))
    for name, text in (
        ("install", "write the login service file (again: updates it, or changes nothing)"),
        ("uninstall", "remove the login service file"),
        ("status", "say whether it is installed, current and running"),
    ):
        p = actions.add_parser(name, help=text, description=text)
        if name != "status":
            p.add_argument("--dry-run", action="store_true", help="print what would be done; write nothing")
        p.set_defaults(handler=_handlers[name])
    parser.set_defaults(handler=_no_action)


def _no_action(args: argparse.Namespace, env: Env) -> ExitStatus:
    env.stderr.write("ghostmesh service: an action is needed: install, uninstall or status\n")
    return ExitStatus.USAGE


def _plan(env: Env) -> si.ServicePlan:
    return si.plan(environ=env.environ)


def _install(args: argparse.Namespace, env: Env) -> ExitStatus:
    plan = _plan(env)
    out = env.stdout
    dry = args.dry_run
    out.write(f"{'Dry run: nothing is written. ' if dry else ''}Ghost Mesh {plan.kind} ({plan.platform})\n")
    result = si.install(plan, dry_run=dry)
    for line in result.lines:
        out.write(f"  {line}\n")
    if dry:
        for f in plan.files:
            out.write(f"\n--- {f.path} ---\n{f.content}")
        out.write("\n")
    out.write(f"It runs: {si.display_command(plan)}\n")
    for note in plan.notes:
        out.write(f"{note}\n")
    if plan.start_now:
        out.write(f"To start it now: {plan.start_now}\n")
    out.write(f"To undo: ghostmesh service uninstall   (stop the running one: {plan.stop_now})\n")
    return ExitStatus.OK


def _uninstall(args: argparse.Namespace, env: Env) -> ExitStatus:
    plan = _plan(env)
    result = si.uninstall(plan, dry_run=args.dry_run)
    env.stdout.write(
        f"{'Dry run: nothing is removed. ' if args.dry_run else ''}Ghost Mesh {plan.kind} ({plan.platform})\n"
    )
    for line in result.lines:
        env.stdout.write(f"  {line}\n")
    if result.changed and not args.dry_run:
        env.stdout.write(f"It will not start at the next login. If it is running now: {plan.stop_now}\n")
    return ExitStatus.OK


def _status(args: argparse.Namespace, env: Env) -> ExitStatus:
    plan = _plan(env)
    st = si.status(plan)
    env.stdout.write(f"Ghost Mesh {plan.kind} ({plan.platform})\n")
    for line in st.lines:
        env.stdout.write(f"  {line}\n")
    if not st.installed:
        env.stdout.write("Install it with: ghostmesh service install\n")
    elif not st.current:
        env.stdout.write("Bring it up to date with: ghostmesh service install\n")
    return ExitStatus.OK if st.installed and st.current else ExitStatus.ERROR


_handlers = {"install": _install, "uninstall": _uninstall, "status": _status}
