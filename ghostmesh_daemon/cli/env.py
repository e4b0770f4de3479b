"""Exit codes and the process environment the CLI runs in (injected so tests can fake it)."""

from __future__ import annotations

import enum
import os
import sys
from dataclasses import dataclass, field
from typing import Mapping, TextIO


class ExitStatus(enum.IntEnum):
    """``0`` all done, ``1`` some photo failed or came back weak (not protected within its budget),
    ``2`` bad usage (design.md's contract)."""

    OK = 0
    ERROR = 1
    USAGE = 2


@dataclass
class Env:
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def is_terminal(self) -> bool:
        """Progress bars only on an interactive terminal."""
        isatty = getattr(self.stderr, "isatty", None)
        return bool(isatty and isatty())

    @classmethod
    def from_process(cls) -> "Env":
        return cls()
