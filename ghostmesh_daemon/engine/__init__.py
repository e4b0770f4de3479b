"""The optimizer core: pure torch, no files, no globals.

``protect_image`` takes pixels, faces found on them, targets and LPIPS, and returns protected
pixels with the numbers that describe them. Everything around it is an adapter.
"""

from .optimize import Evaluation, Outcome, evaluate, protect_image
from .scene import Face, FaceView, Scene, ViewGeometry
from .settings import EngineSettings, settings_for

__all__ = ["Evaluation", "Outcome", "evaluate", "protect_image", "Face", "FaceView", "Scene", "ViewGeometry",
           "EngineSettings", "settings_for"]
