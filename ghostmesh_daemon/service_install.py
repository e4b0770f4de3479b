"""Start the daemon at login: render the per-platform service file and put it where the OS looks.

Three platforms, three mechanisms, one plan: a systemd user unit bound to the graphical session
(Linux), a LaunchAgent (macOS), a ``.cmd`` in the Startup folder that launches ``pythonw`` (Windows).
Every file runs the interpreter that is running now (``sys.executable``), so a virtual environment
keeps working without hard-coded paths; moving or deleting that environment makes the installed
file stale, which ``status`` reports.

The templates ship inside the package (``service_templates/*.tmpl``, package data), so they are found
from a source checkout, an editable install and a wheel alike. Each rendered file carries a marker
line; ``uninstall`` only removes files that carry it, so it never deletes a file a user wrote.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Literal, Mapping
from xml.sax.saxutils import escape as xml_escape

from .errors import GhostMeshError
from .imaging.atomic import atomic_write_bytes

Platform = Literal["linux", "macos", "windows"]
PLATFORMS: tuple[Platform, ...] = ("linux", "macos", "windows")

#: Present in every rendered file; ``uninstall`` refuses to delete a file without it.
MARKER = "Written by `ghostmesh service install`"

UNIT_NAME = "ghostmesh.service"
SESSION_TARGET = "graphical-session.target"
AGENT_LABEL = "org.ghostmesh.daemon"
STARTUP_NAME = "Ghost Mesh.cmd"
LOG_NAME = "ghostmesh.log"

#: How the daemon is started from an interpreter. ``-c`` rather than ``-m``: it needs nothing but
#: the package's public entry point, and ``sys.argv[1:]`` is then exactly ``["run"]``.
ENTRY_CODE = "from ghostmesh_daemon.cli import entry_point; entry_point()"
DAEMON_ARGS = ("run",)


class ServiceError(GhostMeshError):
    """The service file could not be planned, written or removed (names the file and the reason)."""


@dataclass(frozen=True)
class ServiceFile:
    """One file the service needs: where it goes and what it contains."""

    path: Path
    content: str
    #: Line ending on disk (``\\r\\n`` for the Windows ``.cmd``).
    newline: str = "\n"

    def data(self) -> bytes:
        return self.content.replace("\n", self.newline).encode("utf-8")


@dataclass(frozen=True)
class ServicePlan:
    """Everything ``install`` writes on one platform, and what to tell the user about it."""

    platform: Platform
    kind: str
    files: tuple[ServiceFile, ...]
    argv: tuple[str, ...]
    #: A symlink ``(link, target)`` that enables the unit, as ``systemctl --user enable`` would.
    links: tuple[tuple[Path, Path], ...] = ()
    start_now: str = ""
    stop_now: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


def current_platform() -> Platform:
    if sys.platform.startswith("win"):
        return "windows"
    if sys.platform == "darwin":
        return "macos"
    return "linux"


def template(name: str) -> Template:
    """A template from the package data; a missing one is an installation problem, said plainly."""
    try:
        text = resources.files("ghostmesh_daemon").joinpath("service_templates").joinpath(name).read_text("utf-8")
    except (FileNotFoundError, OSError) as e:
        raise ServiceError(f"service template {name!r} is missing from the installed package: {e}") from e
    return Template(text)


def daemon_argv(python: str) -> tuple[str, ...]:
    return (python, "-c", ENTRY_CODE, *DAEMON_ARGS)


def display_command(p: "ServicePlan") -> str:
    """The command line as the user would type it on that platform."""
    if p.platform == "windows":
        return subprocess.list2cmdline(list(p.argv))
    return shlex.join(p.argv)


def pythonw_for(python: str) -> str:
    """The console-less interpreter beside ``python`` (``pythonw.exe`` next to ``python.exe``)."""
    sep = "\\" if "\\" in python else "/"
    head, _, name = python.rpartition(sep)
    lower = name.lower()
    if lower.startswith("pythonw"):
        return python
    if lower.startswith("python"):
        name = "pythonw" + name[len("python"):]
    return f"{head}{sep}{name}" if head else name


# --- quoting, one function per file format -------------------------------------------------------


#: Characters systemd refuses in an executable path ("Executable name contains special characters").
_SYSTEMD_BAD_EXE = set("'\"\\")


def systemd_quote(arg: str, *, executable: bool = False) -> str:
    """One ExecStart word: double quotes with C escapes and ``%`` doubled (specifiers).

    ``$`` is doubled in arguments only: systemd expands variables there but not in the executable.
    """
    if any(ord(c) < 32 for c in arg):
        raise ServiceError(f"a control character cannot be written into a systemd unit: {arg!r}")
    out = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if not executable:
        out = out.replace("$", "$$")
    return f'"{out}"'


def systemd_exec_start(argv: tuple[str, ...]) -> str:
    """The ExecStart value for ``argv``. systemd refuses quotes and backslashes in the executable's
    path, so such an interpreter is started through ``/usr/bin/env``, where it is a plain argument."""
    exe, *rest = argv
    if _SYSTEMD_BAD_EXE & set(exe):
        exe, rest = "/usr/bin/env", [exe, *rest]
    return " ".join([systemd_quote(exe, executable=True), *(systemd_quote(a) for a in rest)])


def cmd_quote(arg: str) -> str:
    """One argument of a ``.cmd`` line: double quotes (cmd passes them on), ``%`` doubled for batch.

    Windows paths cannot contain ``"``; an argument that does is refused rather than mangled.
    """
    if '"' in arg or "\n" in arg or "\r" in arg:
        raise ServiceError(f'a double quote or newline cannot be passed through a Windows .cmd file: {arg!r}')
    quoted = arg.replace("%", "%%")
    # MSVCRT argument parsing: backslashes before the closing quote must be doubled.
    trailing = len(quoted) - len(quoted.rstrip("\\"))
    return '"' + quoted + "\\" * trailing + '"'


# --- plans ---------------------------------------------------------------------------------------


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME") or environ.get("USERPROFILE")
    if not home:
        raise ServiceError("cannot find your home folder: HOME is not set")
    return Path(home)


def _linux_plan(environ: Mapping[str, str], python: str) -> ServicePlan:
    config = environ.get("XDG_CONFIG_HOME") or str(_home(environ) / ".config")
    units = Path(config) / "systemd" / "user"
    unit = units / UNIT_NAME
    argv = daemon_argv(python)
    content = template("ghostmesh.service.tmpl").substitute(
        python=python.replace("\n", " "), exec_start=systemd_exec_start(argv)
    )
    link = units / f"{SESSION_TARGET}.wants" / UNIT_NAME
    return ServicePlan(
        platform="linux",
        kind="systemd user unit",
        files=(ServiceFile(unit, content),),
        argv=argv,
        links=((link, unit),),
        start_now=f"systemctl --user daemon-reload && systemctl --user start {UNIT_NAME}",
        stop_now=f"systemctl --user stop {UNIT_NAME}",
        notes=(
            f"It starts with your next graphical login ({SESSION_TARGET}); logs: journalctl --user -u {UNIT_NAME}",
        ),
    )


def _macos_plan(environ: Mapping[str, str], python: str) -> ServicePlan:
    home = _home(environ)
    agent = home / "Library" / "LaunchAgents" / f"{AGENT_LABEL}.plist"
    log_file = home / "Library" / "Logs" / LOG_NAME
    argv = daemon_argv(python)
    arguments = "\n".join(f"\t\t<string>{xml_escape(a)}</string>" for a in argv)
    content = template("org.ghostmesh.daemon.plist.tmpl").substitute(
        label=AGENT_LABEL, program_arguments=arguments, log_file=xml_escape(str(log_file))
    )
    return ServicePlan(
        platform="macos",
        kind="LaunchAgent",
        files=(ServiceFile(agent, content),),
        argv=argv,
        start_now=f'launchctl bootstrap gui/$(id -u) "{agent}"',
        stop_now=f"launchctl bootout gui/$(id -u)/{AGENT_LABEL}",
        notes=(f"It starts when you log in; logs: {log_file}",),
    )


def _windows_plan(environ: Mapping[str, str], python: str) -> ServicePlan:
    appdata = environ.get("APPDATA")
    if not appdata:
        raise ServiceError("cannot find the Startup folder: APPDATA is not set")
    sep = "\\" if "\\" in appdata else "/"
    startup_dir = sep.join([appdata.rstrip("\\/"), "Microsoft", "Windows", "Start Menu", "Programs", "Startup"])
    entry = Path(f"{startup_dir}{sep}{STARTUP_NAME}")
    argv = daemon_argv(pythonw_for(python))
    content = template("ghostmesh-startup.cmd.tmpl").substitute(
        command_line=" ".join(cmd_quote(a) for a in argv)
    )
    return ServicePlan(
        platform="windows",
        kind="Startup folder entry",
        files=(ServiceFile(entry, content, newline="\r\n"),),
        argv=argv,
        start_now=f'"{entry}"',
        stop_now="quit Ghost Mesh from its tray icon",
        notes=("It starts when you log in to Windows (no console window: it runs pythonw).",),
    )


def plan(
    platform: Platform | None = None,
    environ: Mapping[str, str] | None = None,
    python: str | None = None,
) -> ServicePlan:
    """What ``install`` would write for ``platform``; pure (reads templates, touches nothing)."""
    platform = platform or current_platform()
    environ = os.environ if environ is None else environ
    python = python or sys.executable
    if not python:
        raise ServiceError("cannot tell which Python is running (sys.executable is empty)")
    builders = {"linux": _linux_plan, "macos": _macos_plan, "windows": _windows_plan}
    if platform not in builders:
        raise ServiceError(f"unknown platform {platform!r} (expected one of {', '.join(PLATFORMS)})")
    return builders[platform](environ, python)


# --- actions -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What an action did (or, in a dry run, would do), one line per change, for the user."""

    lines: list[str] = field(default_factory=list)
    changed: bool = False


def _is_ours(path: Path) -> bool:
    try:
        return MARKER in path.read_text("utf-8", errors="replace")
    except OSError:
        return False


def install(p: ServicePlan, *, dry_run: bool = False) -> Outcome:
    """Write the plan's files (atomically) and links. Running it twice changes nothing the second time."""
    out = Outcome()
    verb = "would write" if dry_run else "wrote"
    for f in p.files:
        data = f.data()
        if f.path.is_file() and f.path.read_bytes() == data:
            out.lines.append(f"unchanged {f.path} (already installed)")
            continue
        if f.path.exists() and not f.path.is_file():
            raise ServiceError(f"{f.path}: exists and is not a file; remove it first")
        if f.path.exists() and not _is_ours(f.path):
            raise ServiceError(f"{f.path}: exists and was not written by ghostmesh; move it away first")
        action = "update" if f.path.exists() else ""
        out.lines.append(f"{verb} {f.path}" + (" (replacing an older version)" if action else ""))
        out.changed = True
        if not dry_run:
            try:
                f.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(f.path, data)
            except OSError as e:
                raise ServiceError(f"{f.path}: cannot write: {e.strerror or e}") from e
    for link, target in p.links:
        if link.is_symlink() and Path(os.readlink(link)) == target:
            out.lines.append(f"unchanged {link} -> {target}")
            continue
        if link.exists() or link.is_symlink():
            if not link.is_symlink():
                raise ServiceError(f"{link}: exists and is not a link; remove it first")
            if not dry_run:
                link.unlink()
        out.lines.append(f"{'would link' if dry_run else 'linked'} {link} -> {target}")
        out.changed = True
        if not dry_run:
            try:
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(target)
            except OSError as e:
                raise ServiceError(f"{link}: cannot create the link: {e.strerror or e}") from e
    return out


def uninstall(p: ServicePlan, *, dry_run: bool = False) -> Outcome:
    """Remove what ``install`` wrote; files without our marker are left alone (and said so)."""
    out = Outcome()
    verb = "would remove" if dry_run else "removed"
    for link, target in p.links:
        if link.is_symlink() and Path(os.readlink(link)) == target:
            out.lines.append(f"{verb} {link}")
            out.changed = True
            if not dry_run:
                link.unlink()
                with contextlib.suppress(OSError):  # the .wants folder, when nothing else is in it
                    link.parent.rmdir()
    for f in p.files:
        if not f.path.exists():
            out.lines.append(f"not installed: {f.path}")
            continue
        if not _is_ours(f.path):
            raise ServiceError(f"{f.path}: was not written by ghostmesh; left in place")
        out.lines.append(f"{verb} {f.path}")
        out.changed = True
        if not dry_run:
            try:
                f.path.unlink()
            except OSError as e:
                raise ServiceError(f"{f.path}: cannot remove: {e.strerror or e}") from e
    return out


@dataclass(frozen=True)
class Status:
    installed: bool
    current: bool
    lines: tuple[str, ...]


def status(p: ServicePlan) -> Status:
    """Installed? Same as what ``install`` would write now? Running (where the OS can say cheaply)?"""
    lines: list[str] = []
    installed = current = True
    for f in p.files:
        if not f.path.is_file():
            installed = current = False
            lines.append(f"not installed: {f.path}")
        elif f.path.read_bytes() != f.data():
            current = False
            lines.append(f"installed but stale: {f.path} (differs from what `ghostmesh service install` writes now)")
        else:
            lines.append(f"installed: {f.path}")
    for link, target in p.links:
        if link.is_symlink() and Path(os.readlink(link)) == target:
            lines.append(f"enabled: {link}")
        else:
            current = False
            lines.append(f"not enabled: {link} is missing")
    running = _running(p)
    if running:
        lines.append(f"running: {running}")
    return Status(installed, current, tuple(lines))


def _running(p: ServicePlan) -> str:
    """Best effort and read-only: ``systemctl --user is-active`` / ``launchctl list``; '' if unknown."""
    if p.platform != current_platform():
        return ""
    if p.platform == "linux" and shutil.which("systemctl"):
        cmd = ["systemctl", "--user", "is-active", UNIT_NAME]
    elif p.platform == "macos" and shutil.which("launchctl"):
        cmd = ["launchctl", "list", AGENT_LABEL]
    else:
        return ""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if p.platform == "linux":
        state = r.stdout.strip()
        return state if state and "Failed to connect" not in r.stderr else ""
    return "yes" if r.returncode == 0 else "no"
