"""Walk the watched folders and yield one result per file, errors included.

A folder that cannot be read is one error result; the walk goes on (Syncthing's walker does the
same). Hidden folders and the output subfolder are not entered; ignored files are not yielded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .matcher import Matcher


@dataclass(frozen=True)
class ScanResult:
    path: Path
    size: int = 0
    mtime_ns: int = 0
    error: str | None = None


def scan(root: Path, matcher: Matcher, *, top: Path | None = None) -> Iterator[ScanResult]:
    """Every photo under ``top`` (default ``root``), which lies inside the watched ``root``."""
    stack = [Path(top or root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            yield ScanResult(folder, error=f"cannot read folder: {e.strerror or e}")
            continue
        subfolders = []
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    if matcher.dir_reason(path, root) is None:
                        subfolders.append(path)
                    continue
                if not entry.is_file(follow_symlinks=True) or matcher.reason(path, root) is not None:
                    continue
                st = entry.stat(follow_symlinks=True)
            except OSError as e:
                yield ScanResult(path, error=f"cannot read: {e.strerror or e}")
                continue
            yield ScanResult(path, st.st_size, st.st_mtime_ns)
        stack.extend(reversed(subfolders))
