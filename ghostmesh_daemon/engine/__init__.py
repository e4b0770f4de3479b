"""The optimizer core: pure torch, no files, no globals.

``protect_image`` takes pixels, faces found on them, targets and LPIPS, and returns protected
pixels with the numbers that describe them. Everything around it is an adapter.

Submodules load on first use, so commands that only need the settings (``ghostmesh status``) do not
pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Evaluation": "optimize", "Outcome": "optimize", "evaluate": "optimize", "protect_image": "optimize",
    "Face": "scene", "FaceView": "scene", "Scene": "scene", "ViewGeometry": "scene",
    "EngineSettings": "settings", "settings_for": "settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
