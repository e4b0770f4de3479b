"""The editor plugins, loaded in a real Lua of their host's version, against recorded host APIs.

darktable's script runs in Lua 5.4 and Lightroom Classic's plug-in in Lua 5.1 (lupa's ``lua54`` and
``lua51``). The host APIs are small stand-ins written here that record what the plugin does; the
two that run commands (``dt.control.execute``, ``LrTasks.execute``) really run them through
``/bin/sh`` and return what ``system()`` returns, so the quoting is exercised for real. The command
they run is the real ``ghostmesh``, on a real JPEG (a face photo carrying a camera's EXIF) whose
folder and name contain spaces, quotes and non-ASCII letters.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

lupa = pytest.importorskip("lupa", reason="lupa is needed to run the plugins' Lua (pip install -e '.[test]')")
from lupa import lua51, lua54  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DARKTABLE_DIR = ROOT / "plugins" / "darktable"
LIGHTROOM_DIR = ROOT / "plugins" / "lightroom" / "ghostmesh.lrplugin"
DATA = ROOT.parent / "shared" / "data"
FACE = DATA / "faces" / "obama" / "obama.jpg"
CAMERA = DATA / "exif" / "jpg" / "Canon_40D.jpg"
#: Not a photo at all, under a photo's name: ghostmesh must refuse it, whatever its decoder tolerates.
NOT_A_PHOTO = b"this is not a JPEG file, only text under a .jpg name\n" * 20

#: Keep the real optimizer short: this checks the plumbing, not the protection's strength.
FAST_ARGS = "--steps 2 --device cpu"
#: Two steps cannot protect a face: ghostmesh reports the copy weak and leaves the export as it was.
#: Tests of the plumbing (the export replaced, metadata kept) ask for the weak copy with --keep-weak.
KEEP_WEAK = "--keep-weak"
#: One face target: loads quickly and needs no download.
TARGETS = "face"

needs_data = pytest.mark.skipif(
    not (FACE.exists() and CAMERA.exists()),
    reason=f"test photos not found under {DATA} (the shared data folder beside the project)",
)
posix_only = pytest.mark.skipif(os.name != "posix", reason="runs the commands through /bin/sh")


# --- fixtures: an awkward export folder, a real photo, the real command --------------------------


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    d = tmp_path / "Exports d'été \"2024\" – ü"
    d.mkdir()
    return d


def make_export(folder: Path, name: str = "Obama l'été \"final\" ü.jpg") -> Path:
    """A face photo carrying a Canon's EXIF, as an editor would export it."""
    import piexif

    dest = folder / name
    shutil.copy(FACE, dest)
    exif = piexif.load(str(CAMERA))
    exif["thumbnail"] = None
    exif["1st"] = {}
    piexif.insert(piexif.dump(exif), str(dest))
    return dest


@pytest.fixture
def ghostmesh_exe(tmp_path: Path) -> Path:
    """The real ``ghostmesh`` command, reached through a folder whose name needs quoting."""
    bin_dir = tmp_path / "bin dir 'ü'"
    bin_dir.mkdir()
    exe = bin_dir / "ghostmesh"
    installed = Path(sys.executable).parent / "ghostmesh"
    if installed.exists():
        exe.symlink_to(installed)
    else:  # not pip-installed: the same entry point, run by this interpreter
        exe.write_text(
            f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
            "'from ghostmesh_daemon.cli import entry_point; entry_point()' \"$@\"\n"
        )
        exe.chmod(0o755)
    return exe


def system(cmd: str, env: dict[str, str] | None = None) -> int:
    """What C's ``system()`` returns for ``cmd`` on POSIX: the wait status (exit code << 8)."""
    r = subprocess.run(cmd, shell=True, executable="/bin/sh", timeout=900, env=env)
    return r.returncode << 8 if r.returncode >= 0 else -r.returncode


def isolated_env(tmp_path: Path, watched: Path | None = None) -> dict[str, str]:
    """The environment the editor would give ghostmesh, with its own config folder (no user
    config leaks in); ``watched`` becomes a watched folder of the daemon there."""
    config_home = tmp_path / "config home"
    (config_home / "ghostmesh").mkdir(parents=True, exist_ok=True)
    if watched is not None:
        (config_home / "ghostmesh" / "config.toml").write_text(
            f"[[watch]]\npath = {json.dumps(str(watched), ensure_ascii=False)}\n", encoding="utf-8"
        )
    return {**os.environ, "XDG_CONFIG_HOME": str(config_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def read_report(path: Path) -> dict[str, Any]:
    (entry,) = json.loads(path.read_text())
    return entry


def command_argv(cmd: str) -> list[str]:
    """The argv the shell built from a plugin's command line, minus the output redirection."""
    words = shlex.split(cmd)
    assert words[-1] == "2>&1" and words[-2].startswith(">"), cmd
    return words[:-2]


def pixels(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def exif_of(path: Path) -> dict[str, Any]:
    import piexif

    d = piexif.load(str(path))
    return {
        "make": d["0th"].get(piexif.ImageIFD.Make),
        "model": d["0th"].get(piexif.ImageIFD.Model),
        "taken": d["Exif"].get(piexif.ExifIFD.DateTimeOriginal),
    }


def assert_protected(path: Path, before_pixels, before_exif) -> None:
    after = pixels(path)
    assert after.shape == before_pixels.shape
    # Any change: how much two optimizer steps change is the engine's business (the report's max_delta
    # says a perturbation was applied); a file left as it was would be identical.
    assert abs(after - before_pixels).max() > 0, "the exported file was not replaced by a protected one"
    assert exif_of(path) == before_exif and before_exif["make"] == b"Canon"


# --- darktable (Lua 5.4) -------------------------------------------------------------------------

DARKTABLE_STUB = r"""
local host, values, configuration = ...
local registered, handlers = {}, {}
local dt = { configuration = configuration, preferences = {}, control = {} }

function dt.preferences.register(script, name, kind, label, tooltip, default, ...)
  assert(type(script) == "string" and type(name) == "string", "script and name are strings")
  assert(type(label) == "string" and type(tooltip) == "string", "label and tooltip are strings")
  local extra = {...}
  if kind == "enum" then
    local found = false
    for _, v in ipairs(extra) do if v == default then found = true end end
    assert(found, "enum default must be one of its values: " .. name)
  end
  registered[script .. "/" .. name] = { kind = kind, default = default }
  host.record("register", name, kind)
end

function dt.preferences.read(script, name, kind)
  local r = registered[script .. "/" .. name]
  assert(r, "read of an unregistered preference: " .. name)
  assert(r.kind == kind, name .. " is registered as " .. r.kind .. " but read as " .. kind)
  local v = values[name]
  if v == nil then return r.default end
  return v
end

function dt.register_event(name, event, fn)
  assert(type(name) == "string" and type(fn) == "function")
  handlers[event] = handlers[event] or {}
  handlers[event][name] = fn
end

function dt.destroy_event(name, event)
  assert(handlers[event] and handlers[event][name], "destroying an event that is not registered")
  handlers[event][name] = nil
end

function dt.control.execute(cmd)
  return host.execute(cmd)
end

function dt.print(msg) host.record("print", msg) end
function dt.print_error(msg) host.record("print_error", msg) end
function dt.print_log(msg) host.record("print_log", msg) end

local function fire(event, ...)
  local n = 0
  for _, fn in pairs(handlers[event] or {}) do
    -- darktable runs event handlers in a coroutine of its own
    local co = coroutine.create(fn)
    local ok, err = coroutine.resume(co, event, ...)
    assert(ok, err)
    n = n + 1
  end
  return n
end

return dt, fire
"""


@dataclass
class Host:
    """The calls a plugin made into its host, in order."""

    env: dict[str, str] | None = None
    calls: list[tuple[str, ...]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    def record(self, kind: str, *args: Any) -> None:
        self.calls.append((kind, *args))

    def execute(self, cmd: str) -> int:
        self.commands.append(cmd)
        return system(cmd, self.env)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [c[1:] for c in self.calls if c[0] == kind]


@dataclass
class Darktable:
    lua: Any
    host: Host
    script_data: Any
    fire: Any

    def export(self, path: Path, source_name: str = "IMG_0042.CR2") -> int:
        image = self.lua.table_from({"filename": source_name, "path": "/photos/2024", "id": 42})
        fmt = self.lua.table_from({"extension": path.suffix.lstrip(".")})
        storage = self.lua.table_from({"name": "file on disk"})
        return self.fire("intermediate-export-image", image, str(path), fmt, storage)


class WindowsHost(Host):
    """cmd.exe cannot run here: record the line and answer as cmd.exe does for an unknown command."""

    def execute(self, cmd: str) -> int:
        self.commands.append(cmd)
        return 9009


def load_darktable(
    tmp_path: Path, prefs: dict[str, Any], *, api_major: int = 9, running_os: str = "linux", host: Host | None = None
) -> Darktable:
    lua = lua54.LuaRuntime(unpack_returned_tuples=True)
    assert lua.eval("_VERSION") == "Lua 5.4"
    host = host or Host(env=isolated_env(tmp_path))
    tmp_dir = tmp_path / "darktable tmp"
    tmp_dir.mkdir(exist_ok=True)
    configuration = lua.table_from(
        {"api_version_major": api_major, "api_version_string": f"{api_major}.0.0",
         "running_os": running_os, "tmp_dir": str(tmp_dir)}
    )
    dt, fire = lua.execute(DARKTABLE_STUB, host, lua.table_from(prefs), configuration)
    lua.globals().package.preload["darktable"] = lua.eval("function(dt) return function() return dt end end")(dt)
    lua.globals().package.path = f"{DARKTABLE_DIR}/?.lua;" + lua.globals().package.path
    script_data = lua.eval('(require("ghostmesh"))')
    return Darktable(lua, host, script_data, fire)


def dt_prefs(exe: Path, **extra: Any) -> dict[str, Any]:
    return {"executable": str(exe), "targets": TARGETS, "extra_args": FAST_ARGS, **extra}


@posix_only
@needs_data
def test_darktable_export_is_replaced_by_its_protected_version(tmp_path, export_dir, ghostmesh_exe):
    photo = make_export(export_dir)
    exported = photo.read_bytes()
    before_pixels, before_exif = pixels(photo), exif_of(photo)
    report = tmp_path / "report.json"
    # --keep-weak: two steps give a weak copy; this test is about the export being replaced.
    extra = f"{FAST_ARGS} {KEEP_WEAK} --report {report}"
    dt = load_darktable(
        tmp_path,
        {"executable": str(ghostmesh_exe), "preset": "panic", "targets": TARGETS, "steps": 2,
         "extra_args": extra, "keep_unprotected": True},
    )
    assert dt.export(photo) == 1

    (cmd,) = dt.host.commands
    assert command_argv(cmd) == [
        str(ghostmesh_exe), "protect", "--in-place", "--preset", "panic", "--targets", TARGETS,
        "--steps", "2", *extra.split(), "--", str(photo),
    ]
    assert dt.host.of("print_error") == [], dt.host.calls
    (shown,) = dt.host.of("print")
    assert shown[0].startswith("Ghost Mesh: IMG_0042.CR2 only weakly protected (kept at your request, --keep-weak): ")
    assert "still matched by face" in shown[0]
    entry = read_report(report)
    assert entry["status"] == "weak" and entry["input"] == entry["output"] == str(photo)
    assert entry["steps"] == 2 and entry["targets"] == [TARGETS] and entry["max_delta"] > 0
    assert_protected(photo, before_pixels, before_exif)
    copy = export_dir / "Obama l'été \"final\" ü.unprotected.jpg"
    assert copy.read_bytes() == exported  # the copy asked for in the preferences
    assert sorted(p.name for p in export_dir.iterdir()) == sorted([photo.name, copy.name])  # no temporaries
    assert list((tmp_path / "darktable tmp").iterdir()) == []  # the output log is cleaned up


@posix_only
@needs_data
def test_darktable_weak_export_is_reported_not_protected_and_moved_aside(tmp_path, export_dir, ghostmesh_exe):
    """One step cannot protect: ghostmesh leaves the export as it was and exits 1; darktable says it
    is not protected and why, and moves the unprotected file aside exactly as for a failure."""
    photo = make_export(export_dir)
    exported = photo.read_bytes()
    dt = load_darktable(tmp_path, dt_prefs(ghostmesh_exe, extra_args="--steps 1 --device cpu"))
    dt.export(photo)

    (error,) = dt.host.of("print_error")
    message = error[0]
    assert message.startswith("Ghost Mesh could not protect IMG_0042.CR2: not protected enough (weak): face 1 "
                              "still matched by face (distance "), message
    assert "left unchanged" not in message and "--keep-weak" not in message  # ghostmesh's hint for its own CLI
    assert ("print", message) in dt.host.calls
    assert not photo.exists()  # nothing unprotected under the export name
    aside = export_dir / "Obama l'été \"final\" ü.unprotected.jpg"
    assert aside.read_bytes() == exported  # ghostmesh left it untouched; it was only renamed
    assert message.endswith(f"(the unprotected export is {aside})")
    assert sorted(p.name for p in export_dir.iterdir()) == [aside.name]  # no temporaries


@posix_only
def test_darktable_photo_without_a_face_is_exported_as_it_is(tmp_path, export_dir, ghostmesh_exe):
    """Face targets only and no face: nothing to protect; the export goes on unchanged, and says so."""
    from PIL import Image

    photo = export_dir / "sky.jpg"
    Image.new("RGB", (160, 120), (90, 140, 200)).save(photo, quality=90)
    exported = photo.read_bytes()
    dt = load_darktable(tmp_path, dt_prefs(ghostmesh_exe))
    dt.export(photo, source_name="DSC_0001.NEF")
    assert dt.host.of("print_error") == []
    assert dt.host.of("print") == [("Ghost Mesh: DSC_0001.NEF left as it is: no face found: nothing for the face "
                                    "recognizers to protect",)]
    assert photo.read_bytes() == exported


@posix_only
def test_darktable_failure_names_the_image_and_leaves_nothing_unprotected(tmp_path, export_dir, ghostmesh_exe):
    photo = export_dir / "broken 'one'.jpg"
    photo.write_bytes(NOT_A_PHOTO)
    dt = load_darktable(tmp_path, dt_prefs(ghostmesh_exe))
    dt.export(photo, source_name="DSC_0007.NEF")

    (error,) = dt.host.of("print_error")
    message = error[0]
    assert message.startswith("Ghost Mesh could not protect DSC_0007.NEF: ")
    assert str(photo) in message  # ghostmesh's own error names the file...
    assert ("print", message) in dt.host.calls  # ...and darktable shows it on screen too
    assert not photo.exists()  # nothing unprotected under the export name
    aside = export_dir / "broken 'one'.unprotected.jpg"
    assert aside.read_bytes() == NOT_A_PHOTO
    assert str(aside) in message


@posix_only
def test_darktable_missing_executable_is_reported(tmp_path, export_dir):
    photo = export_dir / "a.jpg"
    photo.write_bytes(b"not really a photo")
    dt = load_darktable(tmp_path, {"executable": str(tmp_path / "no such dir" / "ghostmesh")})
    dt.export(photo)
    (error,) = dt.host.of("print_error")
    assert "the ghostmesh command was not found" in error[0]
    assert "lua options" in error[0]
    assert not photo.exists() and (export_dir / "a.unprotected.jpg").exists()


def test_darktable_on_windows_quotes_for_cmd_and_reports_a_missing_command(tmp_path):
    folder = tmp_path / "Win Export ü"
    folder.mkdir()
    photo = folder / "a b.jpg"
    photo.write_bytes(b"x")
    exe = r"C:\Program Files\Ghost Mesh\ghostmesh.exe"
    dt = load_darktable(tmp_path, {"executable": exe, "preset": "panic"}, running_os="windows", host=WindowsHost())
    dt.export(photo)
    (cmd,) = dt.host.commands
    log = str(tmp_path / "darktable tmp") + "\\"
    assert cmd.startswith(f'""{exe}" "protect" "--in-place" "--preset" "panic" "--" "{photo}" >"{log}ghostmesh-')
    assert cmd.endswith('.log" 2>&1"')
    (error,) = dt.host.of("print_error")
    assert "the ghostmesh command was not found" in error[0]


def test_darktable_on_windows_refuses_a_double_quote_it_cannot_pass(tmp_path, export_dir):
    photo = export_dir / "a.jpg"  # the folder's name has double quotes
    photo.write_bytes(b"x")
    dt = load_darktable(tmp_path, {}, running_os="windows", host=WindowsHost())
    dt.export(photo)
    assert dt.host.commands == []
    (error,) = dt.host.of("print_error")
    assert "a double quote cannot be passed on a Windows command line" in error[0]
    assert not photo.exists()  # still closed: nothing unprotected under the export name


def test_darktable_does_nothing_when_disabled(tmp_path, export_dir):
    photo = export_dir / "a.jpg"
    photo.write_bytes(b"x")
    dt = load_darktable(tmp_path, {"enabled": False})
    dt.export(photo)
    assert dt.host.commands == [] and photo.read_bytes() == b"x"


def test_darktable_script_manager_contract(tmp_path):
    dt = load_darktable(tmp_path, {"enabled": False})
    sd = dt.script_data
    assert sd.metadata.name == "Ghost Mesh" and sd.metadata.purpose
    registered = {args[0]: args[1] for args in dt.host.of("register")}
    assert registered == {
        "enabled": "bool", "executable": "file", "preset": "enum", "targets": "string",
        "steps": "integer", "extra_args": "string", "keep_unprotected": "bool",
    }
    assert dt.fire("intermediate-export-image", None, "/nonexistent/x.jpg") == 1  # the hook is there
    sd.destroy()
    assert dt.fire("intermediate-export-image", None, "/nonexistent/x.jpg") == 0  # and gone


def test_darktable_too_old_api_says_so_and_hooks_nothing(tmp_path):
    dt = load_darktable(tmp_path, {}, api_major=5)
    (error,) = dt.host.of("print_error")
    assert "needs darktable's Lua API 6.0 or newer" in error[0]
    assert dt.fire("intermediate-export-image", None, "/x.jpg") == 0


# --- Lightroom Classic (Lua 5.1) -----------------------------------------------------------------

LIGHTROOM_STUB = r"""
local host, temp_dir, win = ...
WIN_ENV = win
MAC_ENV = not win
_PLUGIN = { id = "org.ghostmesh.lightroom", path = host.plugin_dir() }

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local modules = {}
modules.LrTasks = {
  execute = function(cmd) return host.execute(cmd) end,
  pcall = pcall,
}
modules.LrFileUtils = {
  exists = function(path) if exists(path) then return "file" end return false end,
  readFile = function(path)
    local f = assert(io.open(path, "rb")); local d = f:read("*a"); f:close(); return d
  end,
  delete = function(path) host.record("delete", path); return os.remove(path) ~= nil end,
  chooseUniqueFileName = function(path)
    local candidate, i = path, 1
    while exists(candidate) do
      i = i + 1
      candidate = string.gsub(path, "(%.[^.]+)$", "-" .. i .. "%1")
    end
    return candidate
  end,
}
modules.LrPathUtils = {
  child = function(a, b) return a .. "/" .. b end,
  leafName = function(p) return (string.match(p, "([^/]+)$")) end,
  getStandardFilePath = function(which) assert(which == "temp"); return temp_dir end,
}
modules.LrView = {
  bind = function(spec)
    if type(spec) == "string" then return { bind_to_key = spec } end
    return { bind_to_key = spec.key, transform = spec.transform }
  end,
  share = function(name) return { shared = name } end,
}
modules.LrDialogs = {
  runOpenPanel = function(args) host.record("runOpenPanel", args.title); return { "/Applications/ghostmesh" } end,
}

function import(name)
  local m = modules[name]
  assert(m, "import of an SDK module the stub does not provide: " .. name)
  return m
end

local function rendition(path, ok, message)
  local source = { destinationPath = path, wasSkipped = false,
                   photo = { getRawMetadata = function(self, key) assert(key == "isVideo"); return false end } }
  function source:waitForRender()
    if ok then return true, path end
    return false, message
  end
  local target = { destinationPath = path }
  function target:renditionIsDone(success, msg)
    host.record("renditionIsDone", path, success, msg)
  end
  return source, target
end

local function filter_context(properties, list)
  local context = { propertyTable = properties }
  function context:renditions(options)
    local i = 0
    return function()
      i = i + 1
      local r = list[i]
      if r then return r[1], r[2] end
    end
  end
  return context
end

return rendition, filter_context
"""


@dataclass
class Lightroom:
    lua: Any
    host: Host
    provider: Any
    rendition: Any
    filter_context: Any

    def export(self, properties: dict[str, Any], renditions: list[tuple[Path, bool, str | None]]) -> None:
        items = [self.lua.table(*self.rendition(str(p), ok, msg)) for p, ok, msg in renditions]
        context = self.filter_context(self.lua.table_from(properties), self.lua.table(*items))
        self.provider.postProcessRenderedPhotos(self.lua.table(), context)


class LightroomHost(Host):
    def plugin_dir(self) -> str:
        return str(LIGHTROOM_DIR)


def load_lightroom(tmp_path: Path, watched: Path | None = None) -> Lightroom:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    assert lua.eval("_VERSION") == "Lua 5.1"
    host = LightroomHost(env=isolated_env(tmp_path, watched))
    temp = tmp_path / "lightroom temp"
    temp.mkdir(exist_ok=True)
    rendition, filter_context = lua.execute(LIGHTROOM_STUB, host, str(temp), False)
    lua.globals().package.path = f"{LIGHTROOM_DIR}/?.lua;" + lua.globals().package.path
    provider = lua.eval(f"dofile({lua_string(LIGHTROOM_DIR / 'GhostMeshFilter.lua')})")
    return Lightroom(lua, host, provider, rendition, filter_context)


def lua_string(value: object) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def lr_properties(exe: Path, **extra: Any) -> dict[str, Any]:
    return {"ghostmesh_executable": str(exe), "ghostmesh_targets": TARGETS, "ghostmesh_extra_args": FAST_ARGS, **extra}


def test_lightroom_info_declares_the_export_filter():
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    info = lua.eval(f"dofile({lua_string(LIGHTROOM_DIR / 'Info.lua')})")
    assert info.LrSdkVersion >= 6 and info.LrToolkitIdentifier == "org.ghostmesh.lightroom"
    assert info.LrPluginName == "Ghost Mesh"
    (filter_,) = list(info.LrExportFilterProvider.values())
    assert (LIGHTROOM_DIR / filter_.file).is_file() and filter_.id and filter_.title


@posix_only
@needs_data
def test_lightroom_rendition_is_protected_in_place(tmp_path, export_dir, ghostmesh_exe):
    photo = make_export(export_dir)
    before_pixels, before_exif = pixels(photo), exif_of(photo)
    report = tmp_path / "report.json"
    # --keep-weak: two steps give a weak copy; this test is about the rendition being replaced.
    extra = f"{FAST_ARGS} {KEEP_WEAK} --report {report}"
    lr = load_lightroom(tmp_path)
    properties = lr_properties(ghostmesh_exe, ghostmesh_preset="panic", ghostmesh_targets=TARGETS,
                               ghostmesh_extra_args=extra)
    lr.export(properties, [(photo, True, None)])

    (cmd,) = lr.host.commands
    assert command_argv(cmd) == [
        str(ghostmesh_exe), "protect", "--in-place", "--preset", "panic", "--targets", TARGETS,
        *extra.split(), "--", str(photo),
    ]
    assert lr.host.of("renditionIsDone") == []  # the weak copy asked for: the export carries on with it
    entry = read_report(report)
    assert entry["status"] == "weak" and entry["output"] == str(photo) and entry["max_delta"] > 0
    assert_protected(photo, before_pixels, before_exif)
    assert sorted(p.name for p in export_dir.iterdir()) == [photo.name]
    assert list((tmp_path / "lightroom temp").iterdir()) == []


@posix_only
@needs_data
def test_lightroom_weak_rendition_is_not_exported_and_says_why(tmp_path, export_dir, ghostmesh_exe):
    photo = make_export(export_dir)
    lr = load_lightroom(tmp_path)
    lr.export(lr_properties(ghostmesh_exe, ghostmesh_extra_args="--steps 1 --device cpu"), [(photo, True, None)])
    ((path, success, message),) = lr.host.of("renditionIsDone")
    assert (path, success) == (str(photo), False)
    assert message.startswith(f"Ghost Mesh could not protect {photo.name}: not protected enough (weak): face 1 "
                              "still matched by face (distance "), message
    assert message.endswith("The photo was not exported.") and "--keep-weak" not in message
    assert not photo.exists()  # the unprotected render does not reach the destination
    assert list(export_dir.iterdir()) == []


@posix_only
def test_lightroom_failure_reaches_rendition_is_done(tmp_path, export_dir, ghostmesh_exe):
    """ghostmesh refuses --in-place inside a watched folder; Lightroom hears why, per photo."""
    refused = export_dir / "refused ü.jpg"
    refused.write_bytes(NOT_A_PHOTO)
    failed_upstream = export_dir / "never rendered.jpg"
    lr = load_lightroom(tmp_path, watched=export_dir)
    lr.export(lr_properties(ghostmesh_exe), [(refused, True, None), (failed_upstream, False, "disk full")])

    assert len(lr.host.commands) == 1  # nothing is run for a photo Lightroom could not render
    done = lr.host.of("renditionIsDone")
    assert done[1] == (str(failed_upstream), False, "disk full")
    path, success, message = done[0]
    assert (path, success) == (str(refused), False)
    assert message.startswith("Ghost Mesh could not protect refused ü.jpg: ")
    assert "watched folder" in message and str(refused) in message
    assert message.endswith("The photo was not exported.") and ".." not in message
    assert not refused.exists()  # the unprotected render does not reach the destination


@posix_only
def test_lightroom_missing_executable_reaches_rendition_is_done(tmp_path, export_dir):
    photo = export_dir / "a.jpg"
    photo.write_bytes(b"x")
    lr = load_lightroom(tmp_path)
    lr.export({"ghostmesh_executable": str(tmp_path / "nowhere" / "ghostmesh")}, [(photo, True, None)])
    ((_, success, message),) = lr.host.of("renditionIsDone")
    assert success is False and "the ghostmesh command was not found" in message and "Export dialog" in message


def test_lightroom_export_dialog_section_binds_every_preset_field(tmp_path):
    lr = load_lightroom(tmp_path)
    # LrView's factory: f:row{...}, f:edit_field{...} return the widget description, recorded in order
    f, recorded = lr.lua.execute(
        """
        local widgets = {}
        local f = setmetatable({}, { __index = function(_, kind)
          return function(self, props) props.kind = kind; widgets[#widgets + 1] = props; return props end
        end })
        return f, widgets
        """
    )
    properties = lr.lua.table_from({})
    section = lr.provider.sectionForFilterInDialog(f, properties)
    assert section.title == "Protect with Ghost Mesh"
    widgets = lua_list(recorded)
    bound = {w.value.bind_to_key for w in widgets if w.value is not None}
    fields = {f.key for f in lr.provider.exportPresetFields.values()}
    assert fields == bound == {"ghostmesh_executable", "ghostmesh_preset", "ghostmesh_targets", "ghostmesh_extra_args"}
    presets = [item.value for item in lua_list(next(w for w in widgets if w.kind == "popup_menu")["items"])]
    assert presets == ["", "stealth", "panic"]
    (button,) = [w for w in widgets if w.kind == "push_button"]
    button.action()
    assert properties.ghostmesh_executable == "/Applications/ghostmesh"


# --- the command line both plugins build -----------------------------------------------------------

AWKWARD = ["plain", "two words", "it's", 'say "hi"', "$HOME `id` $(id) \\n", "ü é ß 写真", "-starts-with-dash", "", "a\nb", "*"]


def darktable_command(tmp_path: Path):
    """(runtime, the darktable script's command functions): tables must come from the same runtime."""
    dt = load_darktable(tmp_path, {"enabled": False})
    return dt.lua, dt.script_data.command


def lightroom_command():
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().package.path = f"{LIGHTROOM_DIR}/?.lua;" + lua.globals().package.path
    return lua, lua.eval('(require("GhostMeshCommand"))')


def command_for(tmp_path: Path, which: str):
    return darktable_command(tmp_path) if which == "darktable" else lightroom_command()


def lua_list(t) -> list:
    return [t[i] for i in range(1, len(t) + 1)]


@posix_only
@pytest.mark.parametrize("which", ["darktable", "lightroom"])
def test_posix_quoting_survives_a_real_shell(tmp_path, which):
    _, command = command_for(tmp_path, which)
    for s in AWKWARD:
        out = subprocess.run(
            "printf '%s' " + command.quote_posix(s), shell=True, executable="/bin/sh", capture_output=True, check=True
        ).stdout.decode("utf-8")
        assert out == s


@pytest.mark.parametrize("which", ["darktable", "lightroom"])
def test_windows_command_line(tmp_path, which):
    lua, command = command_for(tmp_path, which)
    assert command.quote_windows(r"C:\Users\Zoë\My Pictures\a b.jpg") == r'"C:\Users\Zoë\My Pictures\a b.jpg"'
    assert command.quote_windows("C:\\dir\\") == '"C:\\dir\\\\"'  # the closing quote is not escaped
    q, err = command.quote_windows('a"b')
    assert q is None and "double quote" in err
    settings = lua.table_from({"executable": r"C:\Program Files\Ghost Mesh\ghostmesh.exe"})
    args = command.arguments(settings, r"D:\Export\IMG 1.jpg")
    line = command.line(args, r"C:\Temp\gm.log", True)
    assert line == (
        r'""C:\Program Files\Ghost Mesh\ghostmesh.exe" "protect" "--in-place" "--" "D:\Export\IMG 1.jpg"'
        r' >"C:\Temp\gm.log" 2>&1"'
    )
    # cmd.exe /c drops exactly the outer pair; what remains splits back into the arguments
    inner = line[1:-1].rsplit(" >", 1)[0]
    assert _msvcrt_split(inner) == lua_list(args)


def _msvcrt_split(line: str) -> list[str]:
    """Split a command line by the Microsoft C runtime's rules (quotes and backslashes only)."""
    args, cur, in_quotes, i, have = [], [], False, 0, False
    while i < len(line):
        c = line[i]
        if c == "\\":
            j = i
            while j < len(line) and line[j] == "\\":
                j += 1
            n = j - i
            if j < len(line) and line[j] == '"':
                cur.append("\\" * (n // 2))
                if n % 2:
                    cur.append('"')
                    i = j + 1
                else:
                    i = j
            else:
                cur.append("\\" * n)
                i = j
            have = True
            continue
        if c == '"':
            in_quotes = not in_quotes
            have = True
        elif c == " " and not in_quotes:
            if have:
                args.append("".join(cur))
                cur, have = [], False
        else:
            cur.append(c)
            have = True
        i += 1
    if have:
        args.append("".join(cur))
    return args


@pytest.mark.parametrize(
    ("status", "windows", "code"), [(0, False, 0), (256, False, 1), (512, False, 2), (127 << 8, False, 127), (9009, True, 9009), (1, True, 1)]
)
def test_exit_status_decoding_agrees(tmp_path, status, windows, code):
    assert darktable_command(tmp_path)[1].exit_code(status, windows) == code
    assert lightroom_command()[1].exit_code(status, windows) == code


def test_both_plugins_build_the_same_command(tmp_path):
    (dt_lua, dt_cmd), (lr_lua, lr_cmd) = darktable_command(tmp_path), lightroom_command()
    for windows in (False, True):
        for name in ("/x/y z.jpg", "C:\\a b\\c.tif", "-dash.png"):
            settings = {"executable": "/opt/g m", "targets": "siglip, face", "steps": 3, "extra_args": " --device  cpu "}
            dt_args = dt_cmd.arguments(dt_lua.table_from(settings), name)
            lr_args = lr_cmd.arguments(lr_lua.table_from(settings), name)
            assert lua_list(dt_args) == lua_list(lr_args) == [
                "/opt/g m", "protect", "--in-place", "--targets", "siglip,face", "--steps", "3",
                "--device", "cpu", "--", name,
            ]
            assert dt_cmd.line(dt_args, "/t/l.log", windows) == lr_cmd.line(lr_args, "/t/l.log", windows)
    for path in ("/a/b.c/photo.jpg", "/a/b.c/photo", "C:\\x.y\\p.JPG"):
        assert dt_cmd.unprotected_name(path) == lr_cmd.unprotected_name(path)
    assert dt_cmd.unprotected_name("/a/b.c/photo.jpg") == "/a/b.c/photo.unprotected.jpg"
    assert dt_cmd.unprotected_name("/a/b.c/photo") == "/a/b.c/photo.unprotected"


WEAK_LINE = ("/x/IMG 1.jpg: weak: face 1 not protected against face (distance 0.01 of goal 1.00); face 1 visibly "
             "changed (LPIPS 0.0310 over the budget 0.03) (left unchanged; --keep-weak replaces it anyway)")
KEPT_LINE = "/x/IMG 1.jpg -> /x/IMG 1.jpg: weak (kept at your request): face 1 not protected against face (distance 0.01 of goal 1.00)"


@pytest.mark.parametrize("output, kind, reasons, reason", [
    (f"WARNING: target 'siglip' is not used\n{WEAK_LINE}\n", "weak",
     "face 1 not protected against face (distance 0.01 of goal 1.00); face 1 visibly changed (LPIPS 0.0310 over the budget 0.03)",
     "not protected enough (weak): face 1 not protected against face (distance 0.01 of goal 1.00); face 1 visibly "
     "changed (LPIPS 0.0310 over the budget 0.03)"),
    (KEPT_LINE + "\n", "kept", "face 1 not protected against face (distance 0.01 of goal 1.00)", KEPT_LINE),
    ("/x/a.jpg: failed: not an image (unrecognised content)\n", None, None, "/x/a.jpg: failed: not an image (unrecognised content)"),
])
def test_both_plugins_read_a_weak_outcome_the_same_way(tmp_path, output, kind, reasons, reason):
    for _, command in (darktable_command(tmp_path), lightroom_command()):
        got = command.weak(output)
        assert (got if kind is None else tuple(got)) == ((kind, reasons) if kind else None)
        assert command.reason(1, output, "ghostmesh") == reason
        assert command.skipped(output) is None
    for _, command in (darktable_command(tmp_path), lightroom_command()):
        assert command.skipped("/x/sky.jpg: skipped: no face found: nothing for the face recognizers to protect\n") == (
            "no face found: nothing for the face recognizers to protect")
