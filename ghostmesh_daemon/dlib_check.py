"""The independent check: dlib's own ``face_recognition`` pipeline, untouched by our torch port.

HOG detector, 5-point landmarks, 150 px chip with padding 0.25, descriptor, Euclidean distance, and
"same person" below 0.6. This is what a person running ``face_recognition`` on a protected photo
would get, so reports and benchmarks judge protection with it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from .engine.scene import Face
from .faces import _dlib_models
from .weights import dlib_face_resnet

MATCH_THRESHOLD = 0.6


@lru_cache(maxsize=1)
def _recognizer():
    import dlib

    return dlib.face_recognition_model_v1(str(dlib_face_resnet().path))


@dataclass(frozen=True)
class FoundFace:
    box: tuple[int, int, int, int]
    descriptor: np.ndarray


def find_faces(rgb: np.ndarray, upsample: int = 1) -> list[FoundFace]:
    """Every face dlib finds in an (H, W, 3) uint8 photo, with its descriptor."""
    detector, predictor = _dlib_models()
    out = []
    for rect in detector(rgb, upsample):
        d = np.array(_recognizer().compute_face_descriptor(rgb, predictor(rgb, rect), 0, 0.25))
        out.append(FoundFace((rect.left(), rect.top(), rect.right(), rect.bottom()), d))
    return out


def descriptor_at(rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """dlib's descriptor of the face inside ``box`` (landmarks found on ``rgb`` itself)."""
    import dlib

    _, predictor = _dlib_models()
    rect = dlib.rectangle(*(int(round(v)) for v in box))
    return np.array(_recognizer().compute_face_descriptor(rgb, predictor(rgb, rect), 0, 0.25))


def distances_to_original(original: np.ndarray, protected: np.ndarray, faces: list[Face]) -> list[float]:
    """Per face found on the original: dlib distance between original and protected.

    The protected face is aligned with landmarks found on the protected photo inside the original's
    face box: the most favourable alignment an attacker could get, even if HOG no longer finds it.
    """
    return [round(float(np.linalg.norm(descriptor_at(original, f.box) - descriptor_at(protected, f.box))), 4)
            for f in faces]


def best_match(candidates: list[FoundFace], reference: np.ndarray) -> float | None:
    """Smallest distance from any face in ``candidates`` to ``reference`` (None: no face found)."""
    if not candidates:
        return None
    return float(min(np.linalg.norm(c.descriptor - reference) for c in candidates))


def upload_like(rgb: np.ndarray, quality: int = 75, long_side: int | None = 1080) -> np.ndarray:
    """What a platform does to an upload: resize to ``long_side`` (never up), then JPEG ``quality``."""
    im = Image.fromarray(rgb)
    if long_side is not None and max(im.size) > long_side:
        s = long_side / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).copy()
