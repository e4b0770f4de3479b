"""Atomic file output: a hidden temporary name in the destination folder, fsync, rename, fsync the folder.

A crash, a full disk or a read-only folder leaves either the previous file (or nothing) under the final
name, never a partial one; the temporary is removed on every error path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

#: Marker in the names of our temporaries (``.<name>.ghosttmp-XXXXXXXX``); :func:`is_temp` matches it.
TEMP_MARKER = ".ghosttmp-"


def temp_name(dest: Path) -> Path:
    """A fresh hidden temporary path beside ``dest``."""
    return dest.with_name(f".{dest.name}{TEMP_MARKER}{secrets.token_hex(4)}")


def is_temp(path: Path) -> bool:
    """True for a temporary written by this module (the watcher and the CLI must ignore these)."""
    name = Path(path).name
    return name.startswith(".") and TEMP_MARKER in name


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # some platforms (Windows) cannot open folders; rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_no_clobber(tmp: Path, dest: Path) -> None:
    """Give ``tmp`` the name ``dest`` only if nothing has that name (FileExistsError otherwise)."""
    try:
        os.link(tmp, dest)  # atomic and never replaces an existing file
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network or FAT folders): check, then rename
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "file exists", str(dest)) from None
        os.replace(tmp, dest)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_output(dest: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on a clean exit make it ``dest`` atomically.

    The caller writes the whole file to the yielded path. On success the temporary is fsync'd,
    renamed over ``dest`` (``os.replace``) and the folder is fsync'd. With ``replace=False`` an
    existing ``dest`` is never replaced (``FileExistsError``), even one that appears meanwhile.
    On any exception the temporary is removed and nothing is created or changed under ``dest``.
    """
    dest = Path(dest)
    tmp = temp_name(dest)
    try:
        yield tmp
        _fsync_file(tmp)
        if replace:
            os.replace(tmp, dest)
        else:
            _publish_no_clobber(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(dest.parent)


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically (see :func:`atomic_output`)."""
    with atomic_output(Path(dest)) as tmp:
        # O_EXCL: the random temporary name must not exist (and is never a symlink we follow).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
