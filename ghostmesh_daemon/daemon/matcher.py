"""Which files the daemon leaves alone, and why.

Our own files are rejected first (outputs, our atomic writer's temporaries, anything in the output
subfolder), so no user pattern can ever make the daemon eat its own tail; then names that are not
finished yet (partial downloads, sync temporaries, hidden files); then files that are not photos we
can read; then the user's own patterns.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Iterable

from ..imaging import SUPPORTED_SUFFIXES, is_output
from ..imaging.atomic import is_temp

#: Names that downloaders, browsers and sync tools use while a file is still arriving.
PARTIAL_SUFFIXES = (
    ".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".opdownload",
    ".filepart", ".!sync", ".!qb", ".swp",
)
PARTIAL_MARKERS = ("~syncthing~", ".syncthing.")


@dataclass(frozen=True)
class Matcher:
    """``reason(path, root)`` is ``None`` for a photo to process, else why it is ignored."""

    output_suffix: str = ".ghost"
    output_subfolder: str = ""
    patterns: tuple[str, ...] = ()
    suffixes: frozenset[str] = SUPPORTED_SUFFIXES

    def _relative(self, path: PurePath, root: PurePath | None) -> PurePath:
        if root is not None:
            try:
                return path.relative_to(root)
            except ValueError:
                pass
        return PurePath(path.name)

    def dir_reason(self, path: PurePath, root: PurePath | None = None) -> str | None:
        """Why a whole folder is skipped (hidden, or our output subfolder), else ``None``."""
        rel = self._relative(PurePath(path), root)
        for part in rel.parts:
            if self.output_subfolder and part == self.output_subfolder:
                return "output folder"
            if part.startswith("."):
                return "hidden folder"
        return None

    def reason(self, path: PurePath, root: PurePath | None = None) -> str | None:
        path = PurePath(path)
        name = path.name
        if is_temp(Path(path)):
            return "our temporary file"
        if is_output(Path(path), self.output_suffix):
            return "our output"
        rel = self._relative(path, root)
        folder_reason = self.dir_reason(rel.parent) if rel.parent != PurePath(".") else None
        if folder_reason:
            return f"in {folder_reason}"
        lower = name.lower()
        if lower.endswith(PARTIAL_SUFFIXES) or any(m in lower for m in PARTIAL_MARKERS):
            return "still arriving (partial name)"
        if name.startswith("."):
            return "hidden file"
        if path.suffix.lower() not in self.suffixes:
            return "not a supported photo type"
        rel_text = rel.as_posix()
        for pattern in self.patterns:
            if fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(rel_text, pattern):
                return f"matches ignore pattern {pattern!r}"
        return None

    def accepts(self, path: PurePath, root: PurePath | None = None) -> bool:
        return self.reason(path, root) is None


def root_of(path: PurePath, roots: Iterable[PurePath]) -> PurePath | None:
    """The watched root that contains ``path`` (the deepest one), if any."""
    best = None
    for root in roots:
        try:
            PurePath(path).relative_to(root)
        except ValueError:
            continue
        if best is None or len(root.parts) > len(best.parts):
            best = root
    return best
