"""Helpers shared by the tests of the 112x112 face embedders ported from TF.js (mobileface, mobilefacenet).

Not a test module (no ``test_`` prefix): plain functions the two test files import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ghostmesh_daemon.engine.scene import Face, FaceView, ViewGeometry


def _xorshift32(seed: int):
    s = seed & 0xFFFFFFFF
    while True:
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        yield s


def synthetic_image(seed: int) -> np.ndarray:
    """The same integer image scripts/tfjs_reference.js builds: (112, 112, 3), 0..255, NHWC."""
    rng = _xorshift32(seed)
    coarse = np.array([next(rng) % 256 for _ in range(14 * 14 * 3)], dtype=np.int64).reshape(14, 14, 3)
    fine = np.array([next(rng) % 33 for _ in range(112 * 112 * 3)], dtype=np.int64).reshape(112, 112, 3)
    big = coarse.repeat(8, axis=0).repeat(8, axis=1)
    return np.clip(big + fine - 16, 0, 255).astype(np.float32)


def reference_inputs(case: dict) -> torch.Tensor:
    """The NHWC batch a case of a tfjs_reference.js output fed the graph: image * scale + offset."""
    images = torch.from_numpy(np.stack([synthetic_image(s) for s in case["seeds"]]))
    return images * case["scale"] + case.get("offset", 0.0)


def auc(same: list[float], diff: list[float]) -> float:
    """ROC AUC of 'distance says different': P(random same-pair distance < random different-pair distance)."""
    return float(np.mean([[1.0 if s < d else 0.5 if s == d else 0.0 for d in diff] for s in same]))


def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def detect(rgb: np.ndarray) -> list[Face]:
    from ghostmesh_daemon.faces import detect_faces

    return detect_faces(rgb)


def whole_view(rgb: np.ndarray, face: Face) -> FaceView:
    """The whole photo as the face's view (what the tests embed; the engine renders smaller views)."""
    h, w = rgb.shape[:2]
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    return FaceView(face=face, geometry=ViewGeometry(box=(0, 0, w, h), size=(h, w)), image=image)
