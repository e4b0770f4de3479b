"""The errors users see. Each names the thing it is about and the reason, in one line."""

from __future__ import annotations

from pathlib import Path


class GhostMeshError(Exception):
    """Base for errors that are reported to the user as one line (no traceback)."""


class PhotoError(GhostMeshError):
    """A photo could not be read, processed or written. Names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelUnavailable(GhostMeshError):
    """A model's weights could not be loaded from any source. Says how to get them."""

    def __init__(self, model: str, reason: str, how_to_get: str) -> None:
        self.model = model
        self.reason = reason
        self.how_to_get = how_to_get
        super().__init__(f"model {model!r} is not available: {reason}. {how_to_get}")


class ConfigError(GhostMeshError):
    """A configuration value is invalid. Names the key and the problem."""

    def __init__(self, key: str, problem: str, source: str | Path | None = None) -> None:
        self.key = key
        self.problem = problem
        where = f"{source}: " if source else ""
        super().__init__(f"{where}config key {key!r}: {problem}")


class UsageError(GhostMeshError):
    """The command line was used wrongly (exit status 2)."""
