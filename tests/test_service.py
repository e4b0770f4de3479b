"""`ghostmesh service`: rendered files for the three platforms, dry runs, idempotent install/uninstall.

Everything is written under a temporary HOME (XDG dirs and APPDATA pointed into it); nothing talks
to the real systemd or launchd. The rendered unit is checked by `systemd-analyze verify --user`
where that tool exists.
"""

from __future__ import annotations

import io
import os
import plistlib
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ghostmesh_daemon import service_install as si
from ghostmesh_daemon.cli import main
from ghostmesh_daemon.cli.env import Env

ROOT = Path(__file__).resolve().parents[1]
#: A Python path with every character the three formats must escape (space, quotes, %, $, backslash).
AWKWARD_PYTHON = "/opt/My Apps/py 100% \"$HOME\" it's\\x/bin/python3"


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    h = tmp_path / "home dir"
    h.mkdir()
    return {
        "HOME": str(h),
        "XDG_CONFIG_HOME": str(h / ".config"),
        "APPDATA": str(h / "AppData" / "Roaming"),
        "PATH": os.environ.get("PATH", ""),
    }


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def run_cli(argv: list[str], environ: dict[str, str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, Env(stdout=out, stderr=err, environ=environ))
    return int(code), out.getvalue(), err.getvalue()


# --- rendering -----------------------------------------------------------------------------------


def unquote_systemd_words(line: str) -> list[str]:
    """Split an ExecStart value the way systemd does for double-quoted words (enough for our output)."""
    words, i = [], 0
    while i < len(line):
        if line[i] == " ":
            i += 1
            continue
        assert line[i] == '"', f"unquoted word at {i}: {line[i:]!r}"
        i += 1
        buf = []
        while line[i] != '"':
            if line[i] == "\\":
                buf.append(line[i + 1])
                i += 2
            else:
                buf.append(line[i])
                i += 1
        i += 1
        word = "".join(buf).replace("%%", "%")
        # systemd expands $VARS in arguments only, so only they carry doubled dollars
        words.append(word if not words else word.replace("$$", "$"))
    return words


def test_systemd_unit_runs_this_python_bound_to_the_session(home):
    plan = si.plan("linux", home, AWKWARD_PYTHON)
    (unit,) = plan.files
    assert unit.path == Path(home["XDG_CONFIG_HOME"]) / "systemd" / "user" / "ghostmesh.service"
    text = unit.content
    assert si.MARKER in text
    lines = text.splitlines()
    assert "Restart=on-failure" in lines
    assert "PartOf=graphical-session.target" in lines and "After=graphical-session.target" in lines
    assert "WantedBy=graphical-session.target" in lines
    (exec_line,) = [ln for ln in lines if ln.startswith("ExecStart=")]
    # systemd refuses quotes and backslashes in an executable path: such a Python runs through env
    words = unquote_systemd_words(exec_line[len("ExecStart="):])
    assert words == ["/usr/bin/env", AWKWARD_PYTHON, "-c", si.ENTRY_CODE, "run"]
    assert "%%" in exec_line and "$$HOME" in exec_line  # specifiers and variables cannot fire
    # enabled the way `systemctl --user enable` does it
    assert plan.links == ((unit.path.parent / "graphical-session.target.wants" / "ghostmesh.service", unit.path),)


def test_systemd_unit_runs_a_plain_python_directly(home):
    python = "/home/zoë/My Envs/100% $x/bin/python3"
    (unit,) = si.plan("linux", home, python).files
    (exec_line,) = [ln for ln in unit.content.splitlines() if ln.startswith("ExecStart=")]
    assert exec_line.startswith('ExecStart="/home/zoë/My Envs/100%% $x/bin/python3" "-c"')
    assert unquote_systemd_words(exec_line[len("ExecStart="):]) == [python, "-c", si.ENTRY_CODE, "run"]


def test_systemd_unit_defaults_to_home_config_without_xdg(home):
    env = {k: v for k, v in home.items() if k != "XDG_CONFIG_HOME"}
    (unit,) = si.plan("linux", env, "/usr/bin/python3").files
    assert unit.path == Path(home["HOME"]) / ".config" / "systemd" / "user" / "ghostmesh.service"


def test_launch_agent_plist_parses_and_logs_to_library_logs(home):
    plan = si.plan("macos", home, AWKWARD_PYTHON)
    (agent,) = plan.files
    assert agent.path == Path(home["HOME"]) / "Library" / "LaunchAgents" / "org.ghostmesh.daemon.plist"
    data = plistlib.loads(agent.data())
    assert data["Label"] == "org.ghostmesh.daemon"
    assert data["ProgramArguments"] == [AWKWARD_PYTHON, "-c", si.ENTRY_CODE, "run"]
    assert data["RunAtLoad"] is True
    assert data["KeepAlive"] == {"SuccessfulExit": False}  # restart on failure only
    log = str(Path(home["HOME"]) / "Library" / "Logs" / "ghostmesh.log")
    assert data["StandardOutPath"] == log and data["StandardErrorPath"] == log
    assert si.MARKER in agent.content


def test_windows_startup_entry_uses_pythonw_with_batch_quoting(home):
    python = r"C:\Users\Zoë\My Env 100%\Scripts\python.exe"
    plan = si.plan("windows", home, python)
    (entry,) = plan.files
    assert entry.path.name == "Ghost Mesh.cmd"
    assert entry.path.parent == Path(home["APPDATA"]) / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup"
    raw = entry.data()
    assert raw.count(b"\r\n") == raw.count(b"\n") > 3  # CRLF throughout
    (start,) = [ln for ln in entry.content.splitlines() if ln.startswith("start ")]
    assert start == (
        r'start "Ghost Mesh" "C:\Users\Zoë\My Env 100%%\Scripts\pythonw.exe" "-c" '
        f'"{si.ENTRY_CODE}" "run"'
    )
    assert plan.argv[0].endswith("pythonw.exe")


@pytest.mark.parametrize(
    ("python", "expected"),
    [
        (r"C:\venv\Scripts\python.exe", r"C:\venv\Scripts\pythonw.exe"),
        (r"C:\Python311\pythonw.exe", r"C:\Python311\pythonw.exe"),
        ("/usr/bin/python3.11", "/usr/bin/pythonw3.11"),
    ],
)
def test_pythonw_for(python, expected):
    assert si.pythonw_for(python) == expected


def test_cmd_quote_refuses_what_cmd_cannot_carry():
    assert si.cmd_quote("C:\\dir\\") == '"C:\\dir\\\\"'  # a trailing backslash must not escape the quote
    with pytest.raises(si.ServiceError, match="double quote"):
        si.cmd_quote('a"b')


def test_missing_home_and_appdata_are_one_line_errors():
    with pytest.raises(si.ServiceError, match="HOME is not set"):
        si.plan("macos", {}, "/usr/bin/python3")
    with pytest.raises(si.ServiceError, match="APPDATA is not set"):
        si.plan("windows", {"HOME": "/x"}, "/usr/bin/python3")


# --- systemd's own check -------------------------------------------------------------------------


@pytest.mark.parametrize("dirname", ["py dir 100% $HOME", "py dir it's \\ \"q\""])
def test_systemd_analyze_verifies_the_rendered_unit(home, tmp_path, dirname):
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze is not installed (tests/system-deps.sh installs it when run as root)")
    # A real interpreter behind a path that needs escaping (the second one cannot be an executable
    # path for systemd at all), so a quoting mistake shows up as a verify error, not a pass.
    odd_dir = tmp_path / dirname
    odd_dir.mkdir()
    python = odd_dir / "python3"
    python.symlink_to(sys.executable)
    plan = si.plan("linux", home, str(python))
    si.install(plan)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, **home, "XDG_RUNTIME_DIR": str(runtime)}
    unit = plan.files[0].path

    def verify(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [tool, "verify", "--user", str(path)], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
        )

    r = verify(unit)
    if r.returncode != 0 and ("Failed to initialize manager" in r.stderr or "RuntimeDirectory" in r.stderr):
        pytest.skip(f"systemd-analyze cannot run a user manager here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert "ghostmesh.service:" not in r.stderr, r.stderr  # no warnings about our unit either
    # and systemd's check does catch a broken command here (the check is not vacuous)
    broken = tmp_path / "broken.service"
    broken.write_text(re.sub(r'^ExecStart="[^"]*"', 'ExecStart="/nonexistent/missing"', unit.read_text(), flags=re.M))
    r = verify(broken)
    assert r.returncode != 0 and "missing" in r.stderr, r.stderr


def test_rendered_command_line_starts_the_ghostmesh_cli():
    argv = list(si.plan("linux", {"HOME": "/nonexistent"}).argv)
    assert argv[0] == sys.executable and argv[-1] == "run"
    r = subprocess.run([*argv[:-1], "--version"], capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ghostmesh ")


# --- install / uninstall / status ----------------------------------------------------------------


def test_dry_run_prints_the_unit_and_writes_nothing(home):
    before = files_under(Path(home["HOME"]))
    code, out, err = run_cli(["service", "install", "--dry-run"], home)
    assert code == 0, err
    assert "would write" in out and "Dry run" in out
    assert si.MARKER in out  # the content itself is shown
    assert "ghostmesh service uninstall" in out
    assert files_under(Path(home["HOME"])) == before
    code, out, _ = run_cli(["service", "uninstall", "--dry-run"], home)
    assert code == 0 and files_under(Path(home["HOME"])) == before


@pytest.mark.skipif(sys.platform != "linux", reason="the CLI installs for the running platform; Linux here")
def test_cli_install_is_idempotent_and_uninstall_undoes_it(home):
    root = Path(home["HOME"])
    code, _, _ = run_cli(["service", "status"], home)
    assert code == 1  # not installed
    code, out, err = run_cli(["service", "install"], home)
    assert code == 0, err
    unit = root / ".config" / "systemd" / "user" / "ghostmesh.service"
    link = unit.parent / "graphical-session.target.wants" / "ghostmesh.service"
    assert f"wrote {unit}" in out and link.is_symlink() and link.resolve() == unit
    assert "To undo: ghostmesh service uninstall" in out
    first = (unit.read_bytes(), unit.stat().st_mtime_ns)
    after_first = files_under(root)

    code, out, _ = run_cli(["service", "install"], home)
    assert code == 0 and "unchanged" in out and "wrote" not in out
    assert (unit.read_bytes(), unit.stat().st_mtime_ns) == first
    assert files_under(root) == after_first

    code, out, _ = run_cli(["service", "status"], home)
    assert code == 0 and f"installed: {unit}" in out and "enabled" in out

    code, out, _ = run_cli(["service", "uninstall"], home)
    assert code == 0 and f"removed {unit}" in out
    assert not unit.exists() and not link.is_symlink() and not link.parent.exists()
    code, out, _ = run_cli(["service", "uninstall"], home)
    assert code == 0 and "not installed" in out


@pytest.mark.parametrize("platform", si.PLATFORMS)
def test_install_uninstall_round_trip_for_each_platform(home, platform):
    root = Path(home["HOME"])
    plan = si.plan(platform, home, "/usr/bin/python3")
    assert si.install(plan).changed
    snapshot = files_under(root)
    for f in plan.files:
        assert f.path.read_bytes() == f.data()
    again = si.install(plan)
    assert not again.changed and files_under(root) == snapshot
    assert si.status(plan).installed and si.status(plan).current
    assert si.uninstall(plan).changed
    assert not any(f.path.exists() for f in plan.files)
    assert not si.status(plan).installed


def test_a_moved_environment_is_reported_stale_and_reinstall_updates_it(home):
    old = si.plan("linux", home, "/old/venv/bin/python")
    si.install(old)
    new = si.plan("linux", home, "/new/venv/bin/python")
    st = si.status(new)
    assert st.installed and not st.current and any("stale" in ln for ln in st.lines)
    out = si.install(new)
    assert out.changed and any("replacing an older version" in ln for ln in out.lines)
    assert "/new/venv/bin/python" in new.files[0].path.read_text()


def test_files_not_written_by_ghostmesh_are_never_overwritten_or_removed(home):
    plan = si.plan("linux", home, "/usr/bin/python3")
    unit = plan.files[0].path
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/usr/bin/my-own-thing\n")
    with pytest.raises(si.ServiceError, match="not written by ghostmesh"):
        si.install(plan)
    with pytest.raises(si.ServiceError, match="not written by ghostmesh"):
        si.uninstall(plan)
    assert unit.read_text().startswith("[Service]\nExecStart=/usr/bin/my-own-thing")
    code, _, err = run_cli(["service", "uninstall"], home)
    assert code == 1 and str(unit) in err and "not written by ghostmesh" in err


def test_service_needs_an_action(home):
    code, _, err = run_cli(["service"], home)
    assert code == 2 and "install, uninstall or status" in err


# --- packaging: the templates travel with the package ---------------------------------------------


def test_templates_are_package_data_in_a_built_wheel(tmp_path):
    """Build a real wheel from a copy of the project and look for the templates inside it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    if not (src / "README.md").exists():
        (src / "README.md").write_text("x\n")
    shutil.copytree(ROOT / "ghostmesh_daemon", src / "ghostmesh_daemon", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    if r.returncode != 0 and "No module named pip" in r.stderr:
        pytest.skip("pip is not available to build a wheel")
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("ghostmesh-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for tmpl in ("ghostmesh.service.tmpl", "org.ghostmesh.daemon.plist.tmpl", "ghostmesh-startup.cmd.tmpl"):
        assert f"ghostmesh_daemon/service_templates/{tmpl}" in names
