"""Finding faces on the clean photo (dlib's HOG detector and 5-point landmarks).

This is the shell side of the face targets: it runs once per photo on uint8 pixels, outside the
optimizer, and hands the engine plain :class:`~ghostmesh_daemon.engine.scene.Face` records. Alignment
is computed once on the clean photo, as dlib does, and then applied differentiably to every candidate.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from .engine.scene import Face
from .weights import dlib_landmarks

CHIP_SIZE = 150
CHIP_PADDING = 0.25


@lru_cache(maxsize=1)
def _dlib_models():
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(dlib_landmarks().path))


def chip_to_image(rect: tuple[float, float, float, float], angle: float, size: int = CHIP_SIZE) -> torch.Tensor:
    """The (2, 3) affine from chip pixels to image pixels for a dlib ``chip_details``.

    dlib maps chip corners (0, 0), (n, 0), (n, n) to the rect's top-left, top-right and bottom-right
    corners rotated by ``angle`` about the rect's centre (dlib/image_transforms/interpolation.h,
    ``get_mapping_to_chip``).
    """
    left, top, right, bottom = rect
    cx, cy = (left + right) / 2, (top + bottom) / 2
    c, s = math.cos(angle), math.sin(angle)
    n = size - 1
    sx, sy = (right - left) / n, (bottom - top) / n
    # image = R @ (corner - centre) + centre, corner = (left + c*sx, top + r*sy)
    a = torch.tensor(
        [
            [c * sx, -s * sy, c * (left - cx) - s * (top - cy) + cx],
            [s * sx, c * sy, s * (left - cx) + c * (top - cy) + cy],
        ],
        dtype=torch.float64,
    )
    return a


def detect_faces(rgb: np.ndarray, upsample: int | None = None) -> list[Face]:
    """Faces in an (H, W, 3) uint8 RGB image, largest first.

    Small photos are upsampled once for the HOG detector (its smallest face is about 80 px), as
    ``face_recognition`` does by default.
    """
    import dlib

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    detector, predictor = _dlib_models()
    if upsample is None:
        upsample = 1 if max(rgb.shape[:2]) <= 2000 else 0
    faces = []
    for rect in detector(rgb, upsample):
        shape = predictor(rgb, rect)
        details = dlib.get_face_chip_details(shape, CHIP_SIZE, CHIP_PADDING)
        r = details.rect
        points = torch.tensor([[p.x, p.y] for p in shape.parts()], dtype=torch.float32)
        faces.append(
            Face(
                box=(float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom())),
                landmarks=points,
                chip_to_image=chip_to_image((r.left(), r.top(), r.right(), r.bottom()), details.angle).float(),
                chip_size=CHIP_SIZE,
            )
        )
    faces.sort(key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
    return faces
