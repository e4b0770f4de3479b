"""The per-photo report (design.md's contract): one JSON object per photo.

Every adapter (CLI ``protect`` and ``verify``, the daemon's ledger and status, the plugins) emits
these same entries, so a user can compare numbers wherever they came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import ENGINE_VERSION

#: ``ok``: protected within its budgets, written. ``weak``: measured on the written candidate, some
#: target with a weight was not reached, a perceptual budget was exceeded, or dlib still matches
#: after an upload-like recompression (``reason`` says which); the copy is not published under the
#: protected name unless the user asked for it (``keep_weak``). ``failed``: an error (the reason
#: names it). ``skipped``: nothing to do (already an output, no face for face-only targets, stopped).
Status = Literal["ok", "weak", "failed", "skipped"]


@dataclass
class TargetResult:
    """One target's numbers for one photo. ``items`` holds one dict per face (or one for the image)."""

    name: str
    cosine_before: list[float]
    cosine_after: list[float]
    distance_after: list[float]
    goal: float
    protected: list[bool]
    #: ``face`` (one row per face) or ``image`` (one row for the whole photo).
    kind: str = "face"
    #: The model's own match threshold (its users call two inputs the same below it); None for image targets.
    threshold: float | None = None


@dataclass
class ReportEntry:
    input: str
    output: str | None
    status: Status
    reason: str | None = None
    targets: list[str] = field(default_factory=list)
    target_results: dict[str, TargetResult] = field(default_factory=dict)
    faces: int | None = None
    face_dlib_distance: list[float] = field(default_factory=list)
    lpips: float | None = None
    lpips_resolution: list[int] | None = None
    face_lpips: list[float] = field(default_factory=list)
    ssim: float | None = None
    psnr: float | None = None
    max_delta: float | None = None
    max_flow_px: float | None = None
    steps: int | None = None
    seconds: float | None = None
    device: str | None = None
    engine_version: str = ENGINE_VERSION
    preset: str | None = None
    mode: str | None = None
    limits: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    robustness: dict[str, Any] | None = None
    #: True when the copy failed the verdict (status ``weak``, the reasons in ``reason``); the
    #: upload-like check alone is ``robustness["weak"]``.
    weak: bool | None = None
    #: How each figure was measured, as the engine states it (e.g. ``"lpips": "native, tiled 1024 px"``).
    measured: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReportEntry":
        """The entry :meth:`to_dict` gave (the daemon's hand-off sends entries as JSON)."""
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values["target_results"] = {name: TargetResult(**r) for name, r in (data.get("target_results") or {}).items()}
        return cls(**values)

    @classmethod
    def failed(cls, path: str | Path, reason: str, **kw: Any) -> "ReportEntry":
        return cls(input=str(path), output=None, status="failed", reason=reason, **kw)

    @classmethod
    def skipped(cls, path: str | Path, reason: str, **kw: Any) -> "ReportEntry":
        return cls(input=str(path), output=None, status="skipped", reason=reason, **kw)


def write_report(entries: list[ReportEntry], dest: Path) -> None:
    """Write the report as a JSON list (atomically: a crash leaves the previous report or none)."""
    from .imaging.atomic import atomic_write_bytes

    data = json.dumps([e.to_dict() for e in entries], indent=2, allow_nan=False).encode()
    atomic_write_bytes(dest, data + b"\n")
