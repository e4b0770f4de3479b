"""The daemon's side of the hand-off: ``ghostmesh protect`` (and so both editors' export hooks) sends
its photos over the control socket and the daemon's loaded engine protects them.

One request per command run, answered with JSON lines::

    -> {"cmd": "protect", "version": ..., "engine_version": ..., "settings": {EngineSettings},
        "files": ["/abs/IMG_1.jpg", ...], "out_dir": null, "in_place": false, "strip_gps": false,
        "keep_weak": false, "umask": 18}
    <- {"event": "refused", "fallback": true, "error": "..."}        (nothing done: run it yourself)
    <- {"event": "accepted", "targets": [...], "device": "cpu", "warnings": [...], "paused": [...], "ahead": 1}
    <- {"event": "progress", "index": 0, "step": 3, "total": 120}
    <- {"event": "entry", "index": 0, "entry": {report entry}}
    <- {"event": "wait"}                                             (every few seconds while queued)
    <- {"event": "end"}

What the daemon honours, and what it refuses (``refused``, the caller then runs the photos itself,
saying why): every engine setting that can change per photo (preset, steps, limits, mode, seed,
weights) is applied to the request's photos only; the targets, the device, the SigLIP model and the
goals are fixed by the loaded models, so a request that needs others is refused, as is one from
another version of Ghost Mesh.

Access: the socket is this user's only (uid checked), and each file is checked against the
*requesting process's* credentials (SO_PEERCRED's pid; its uid, groups and capabilities from
``/proc/<pid>/status``), not the daemon's: the photo must be readable and every folder on its way
searchable for it, and the folder the copy goes to writable. A process of the same user with fewer
rights (a sandboxed editor, a process that dropped its capabilities) cannot make the daemon read or
write what it could not. Outputs are created by the daemon, which runs as the same user, and then
given the mode (``0644`` less the caller's umask) and group a run of the caller's own would have.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import ENGINE_VERSION, __version__
from ..report import ReportEntry
from .controller import Controller, HandoffJob, SubmitHandoff

log = logging.getLogger("ghostmesh.daemon")

#: EngineSettings fields fixed by the loaded models: a request must match them.
FIXED_FIELDS = ("siglip_model", "face_goal", "image_goal")
#: How often a waiting request hears from the daemon (and finds out whether its caller is still there).
HEARTBEAT = 5.0

CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2


# --- the requesting process's rights ------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """The credentials the kernel would check for the requesting process."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]
    caps: int

    @classmethod
    def from_creds(cls, creds: tuple[int, int, int]) -> "Peer":
        pid, uid, gid = creds
        groups, caps = {gid}, 0
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            # No /proc: SO_PEERCRED's ids, no capabilities (refuses rather than allows too much).
            return cls(pid, uid, gid, frozenset(groups), 0)
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields = value.split()
            if key == "Uid" and len(fields) >= 4:
                uid = int(fields[3])  # the filesystem uid: the one the kernel checks files with
            elif key == "Gid" and len(fields) >= 4:
                gid = int(fields[3])
                groups.add(gid)
            elif key == "Groups":
                groups.update(int(g) for g in fields)
            elif key == "CapEff" and fields:
                caps = int(fields[0], 16)
        return cls(pid, uid, gid, frozenset(groups), caps)

    def has(self, cap: int) -> bool:
        return bool(self.caps >> cap & 1)

    def may(self, path: Path, want: int) -> bool:
        """Whether this process may access ``path`` as ``want`` (os.R_OK | os.W_OK | os.X_OK), by the
        kernel's DAC rules: capabilities first, then the owner, group or other bits (ACLs and LSMs
        are not modelled; the daemon's own access is checked besides)."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        is_dir = stat.S_ISDIR(st.st_mode)
        if self.has(CAP_DAC_OVERRIDE):
            # everything, except executing a file with no x bit at all (never asked for files here)
            return not (want & os.X_OK) or is_dir or bool(st.st_mode & 0o111)
        if self.has(CAP_DAC_READ_SEARCH) and not (want & os.W_OK):
            if is_dir or not (want & os.X_OK):
                return True
        if st.st_uid == self.uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid in self.groups:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        return bits & want == want


def access_problem(peer: Peer | None, src: Path, dest_dir: Path) -> str | None:
    """Why the requesting process may not have ``src`` protected into ``dest_dir``, or ``None``."""
    checks = [(p, os.X_OK, "search") for p in reversed(src.parents)]
    checks.append((src, os.R_OK, "read"))
    checks.append((dest_dir, os.W_OK | os.X_OK, "write to"))
    for path, want, what in checks:
        if not os.path.exists(path):
            continue  # the pipeline reports a missing file or folder itself, as a local run would
        if not os.access(path, want) or (peer is not None and not peer.may(path, want)):
            return f"permission denied: the requesting process may not {what} {path}"
    return None


# --- the request --------------------------------------------------------------------------------


def settings_from(data: dict[str, Any]):
    from ..engine.settings import EngineSettings

    values = dict(data)
    values["targets"] = tuple(values.get("targets") or ("auto",))
    weights = values.get("target_weights") or {}
    values["target_weights"] = tuple((str(k), float(v)) for k, v in dict(weights).items())
    return EngineSettings(**values)


def incompatibility(protector, wanted) -> str | None:
    """Why the loaded engine cannot protect with ``wanted`` (EngineSettings) exactly as a run of the
    caller's own would, or ``None``."""
    from ..errors import GhostMeshError
    from ..pipeline import pick_device

    have = protector.settings
    loaded = list(protector.target_names)
    auto_here = list(have.targets) == ["auto"]
    auto_there = list(wanted.targets) == ["auto"]
    if auto_there:
        if not auto_here:
            return (f"it protects with the targets {','.join(loaded)} (named in its settings); this run asks for "
                    "auto")
        if "siglip" not in loaded:
            from ..hub import decide

            if decide(wanted.siglip_model, allow_probe=False).usable:
                return "SigLIP has become available since the daemon started (restart it to use SigLIP there)"
    elif sorted(wanted.targets) != sorted(loaded):
        return f"it has the targets {','.join(loaded)} loaded; this run asks for {','.join(wanted.targets)}"
    for name in FIXED_FIELDS:
        if name == "siglip_model" and "siglip" not in loaded:
            continue
        if getattr(wanted, name) != getattr(have, name):
            return f"its {name} is {getattr(have, name)!r}; this run asks for {getattr(wanted, name)!r}"
    try:
        device = pick_device(wanted.device)
    except GhostMeshError as e:
        return str(e)
    if _device_key(device) != _device_key(protector.device):
        return f"it runs on {protector.device}; this run asks for {wanted.device} ({device})"
    return None


def _device_key(device) -> tuple[str, int]:
    return device.type, (device.index or 0)


class HandoffService:
    """Answers ``protect`` requests for one daemon: checks them, queues them ahead of the backlog,
    streams progress and entries back."""

    def __init__(self, protector, controller: Controller, paused: Callable[[], list[str]]) -> None:
        self.protector = protector
        self.controller = controller
        self.paused = paused

    def __call__(self, request: dict[str, Any], creds: tuple[int, int, int] | None,
                 send: Callable[[dict[str, Any]], None]) -> None:
        try:
            problem, settings = self._check(request)
        except (TypeError, ValueError, KeyError) as e:
            problem, settings = f"it cannot read this request ({type(e).__name__}: {e})", None
        if problem is not None:
            log.info("hand-off refused (the caller runs it itself): %s", problem)
            send({"event": "refused", "fallback": True, "error": problem})
            return
        peer = Peer.from_creds(creds) if creds is not None else None
        files = [Path(f) for f in request["files"]]
        out_dir = Path(request["out_dir"]) if request.get("out_dir") else None
        events: queue.Queue = queue.Queue()
        jobs: dict[int, HandoffJob] = {}
        early: dict[int, ReportEntry] = {}
        for i, src in enumerate(files):
            if not src.is_absolute():
                early[i] = ReportEntry.failed(src, "the daemon needs absolute paths")
                continue
            dest_dir = src.parent if out_dir is None else (out_dir if out_dir.is_absolute() else src.parent / out_dir)
            denied = access_problem(peer, src, dest_dir)
            if denied is not None:
                log.warning("hand-off: %s refused: %s (pid %s)", src, denied, creds[0] if creds else "?")
                early[i] = ReportEntry.failed(src, denied)
                continue
            jobs[i] = HandoffJob(str(src), self._runner(src, request, settings, peer),
                                 on_progress=lambda step, total, _i=i: events.put(("progress", _i, step, total)))
        ahead = 0
        if jobs:
            reply = SubmitHandoff(list(jobs.values()))
            try:
                ahead = self.controller.ask(reply, timeout=10)
            except Exception as e:
                send({"event": "refused", "fallback": True, "error": f"it is not taking photos ({e})"})
                return
        for i, job in jobs.items():
            job.future.add_done_callback(lambda f, _i=i: events.put(("done", _i, f)))
        send({"event": "accepted", "targets": list(self.protector.target_names), "device": str(self.protector.device),
              "warnings": list(self.protector.warnings) if list(settings.targets) == ["auto"] else [],
              "paused": self.paused(), "ahead": ahead, "pid": os.getpid()})
        try:
            for i in sorted(early):
                send({"event": "entry", "index": i, "entry": early[i].to_dict()})
            remaining = set(jobs)
            while remaining:
                try:
                    item = events.get(timeout=HEARTBEAT)
                except queue.Empty:
                    send({"event": "wait"})
                    continue
                if item[0] == "progress":
                    send({"event": "progress", "index": item[1], "step": item[2], "total": item[3]})
                    continue
                _, i, future = item
                remaining.discard(i)
                if future.cancelled():
                    continue
                error = future.exception()
                if error is not None:
                    send({"event": "stopped", "error": str(error)})  # the daemon is stopping: the caller goes on alone
                    return
                send({"event": "entry", "index": i, "entry": future.result().to_dict()})
            send({"event": "end"})
        except BaseException:
            for job in jobs.values():
                job.cancelled.set()
            raise

    def _check(self, request: dict[str, Any]):
        if request.get("version") != __version__ or request.get("engine_version") != ENGINE_VERSION:
            return (f"it runs Ghost Mesh {__version__} (engine {ENGINE_VERSION}), this command is "
                    f"{request.get('version')} (engine {request.get('engine_version')}); restart it", None)
        if not isinstance(request.get("files"), list) or not all(isinstance(f, str) for f in request["files"]):
            raise ValueError("files must be a list of paths")
        settings = settings_from(request["settings"])
        return incompatibility(self.protector, settings), settings

    def _runner(self, src: Path, request: dict[str, Any], settings, peer: Peer | None):
        protector = self.protector
        explicit = list(settings.targets) != ["auto"]
        umask = int(request.get("umask", 0o022)) & 0o777

        def run(*, should_stop, progress) -> ReportEntry:
            entry = protector.protect_file(
                src, out_dir=Path(request["out_dir"]) if request.get("out_dir") else None,
                in_place=bool(request.get("in_place")), strip_gps=bool(request.get("strip_gps")),
                keep_weak=bool(request.get("keep_weak")), settings=settings, progress=progress,
                should_stop=should_stop,
            )
            if explicit:  # a run of the caller's own, naming its targets, has no "not used" warnings
                entry.warnings = [w for w in entry.warnings if w not in protector.warnings]
            if entry.output:
                _as_caller_made_it(Path(entry.output), umask, peer)
            entry.notes.append(f"protected by the running daemon (pid {os.getpid()}), its engine already loaded")
            return entry

        return run


def _as_caller_made_it(path: Path, umask: int, peer: Peer | None) -> None:
    """The mode and group a file written by the caller itself would have had."""
    try:
        os.chmod(path, 0o644 & ~umask)
        if peer is not None and peer.gid != os.getegid() and not (os.stat(path.parent).st_mode & stat.S_ISGID):
            os.chown(path, -1, peer.gid)
    except OSError as e:
        log.warning("%s: could not give it the caller's mode/group: %s", path, e.strerror or e)
