"""Encoders we protect against, one module each, behind one protocol and one registry."""

from .base import Target, TargetInfo
from .registry import create_target, list_targets, register_target

# Importing a target module registers it. Keep this list the only place that names them.
from . import face_dlib as _face_dlib  # noqa: E402,F401
from . import siglip as _siglip  # noqa: E402,F401
from . import mobileface as _mobileface  # noqa: E402,F401
from . import mobilefacenet as _mobilefacenet  # noqa: E402,F401  (a held-out judge: not in auto)
from . import sface as _sface  # noqa: E402,F401
from . import facenet as _facenet  # noqa: E402,F401

__all__ = ["Target", "TargetInfo", "create_target", "list_targets", "register_target"]
