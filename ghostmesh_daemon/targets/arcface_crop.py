"""What the 112x112 ArcFace-aligned face embedders share: the crop, and the target around a network.

InsightFace-style models (``mobileface``, ``mobilefacenet``) were trained on 112x112 crops aligned to the
ArcFace 5-point template. We align with dlib's 5 landmarks (only their eye centres: dlib's points have no
mouth corners, and its nose point is the nose base, not the tip) by a similarity transform, computed once
on the clean photo, and sample the crop differentiably from each face view with :func:`sample_crop`.
:class:`ArcFaceCropTarget` is the whole target given a network from (N, 3, 112, 112) RGB in [0, 1] to
embeddings; each model's module only supplies the network, its input convention and its :class:`TargetInfo`.
A model trained on other crops overrides :attr:`ArcFaceCropTarget.crop_size` and
:meth:`ArcFaceCropTarget.crop_geometry` (``facenet``: dlib's chip at 160x160); the sampling stays this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Protocol

import torch
from torch import Tensor, nn

from ..engine.geometry import affine_patch
from ..engine.scene import Face, FaceView, Scene
from ..model_files import locate
from .base import Target, no_rows
from ..readers.tfjs_graph import TfjsGraph, load_graph_model

CROP_SIZE = 112

#: Eye centres of InsightFace's ArcFace 112x112 alignment template (x, y), image-left eye first.
ARCFACE_EYES = ((38.2946, 51.6963), (73.5318, 51.5014))


def eye_centres(landmarks: Tensor) -> Tensor:
    """Eye centres (2, 2) from dlib's 5 points (5, 2): image-left eye first.

    dlib's 5-point model orders its points: 0-1 the corners of the image-right eye, 2-3 those of the
    image-left eye, 4 the base of the nose. Using the indices (not sorting by x) keeps a tilted face right.
    """
    if landmarks.shape != (5, 2):
        raise ValueError(f"expected dlib's 5 landmarks of shape (5, 2), got {tuple(landmarks.shape)}")
    pts = landmarks.to(torch.float64)
    return torch.stack([pts[2:4].mean(0), pts[0:2].mean(0)])


def crop_to_image(landmarks: Tensor, size: int = CROP_SIZE) -> Tensor:
    """Affine (2, 3) float64 from crop pixels (c, r) to image pixels: eyes land on the ArcFace template.

    A similarity (rotation, uniform scale, translation) fixed by the two eye centres; ``size`` other than
    112 scales the template with it.
    """
    eyes = eye_centres(landmarks)
    t = torch.tensor(ARCFACE_EYES, dtype=torch.float64) * (size / CROP_SIZE)
    # As complex numbers: image = z * (crop - t0) + e0, with z = (e1 - e0) / (t1 - t0).
    de = torch.complex(eyes[1, 0] - eyes[0, 0], eyes[1, 1] - eyes[0, 1])
    dt = torch.complex(t[1, 0] - t[0, 0], t[1, 1] - t[0, 1])
    z = de / dt
    a, b = z.real, z.imag
    m = torch.stack([torch.stack([a, -b]), torch.stack([b, a])])
    shift = eyes[0] - m @ t[0]
    return torch.cat([m, shift[:, None]], dim=1)


def crop_to_view(view: FaceView, size: int = CROP_SIZE, to_image: Tensor | None = None) -> Tensor:
    """Affine (2, 3) float64 from crop pixels to the pixels of ``view.image``.

    ``to_image`` is the crop's affine to image pixels; by default the ArcFace alignment (:func:`crop_to_image`).
    """
    a = torch.eye(3, dtype=torch.float64)
    a[:2] = crop_to_image(view.face.landmarks, size) if to_image is None else to_image.to(torch.float64)
    return view.geometry.image_to_view().to(torch.float64) @ a


def sample_crop(image: Tensor, crop_to_pixels: Tensor, size: int = CROP_SIZE) -> Tensor:
    """The (1, C, size, size) crop of ``image`` (1, C, h, w) whose pixel (c, r) lies at ``crop_to_pixels @ [c, r, 1]``.

    Only the part of ``image`` the crop covers (plus the antialiasing kernel's reach) is resampled: a
    view can be far larger than the face, and downscaling all of it every step would cost more than the
    network (0.2 s against 0.03 s on a 1 MP view). Slicing is differentiable; outside the slice the
    gradient is zero, as it would be anyway.
    """
    a = crop_to_pixels.to(torch.float64)
    n = size - 1
    corners = torch.tensor([[0.0, 0.0, 1.0], [n, 0.0, 1.0], [n, n, 1.0], [0.0, n, 1.0]], dtype=torch.float64) @ a.T
    step = float(torch.det(a[:, :2]).abs().sqrt())  # image pixels per crop pixel
    margin = 2.0 * max(step, 1.0) + 2.0
    h, w = image.shape[-2:]
    lo = corners.min(dim=0).values - margin
    hi = corners.max(dim=0).values + margin
    x0, y0 = max(0, int(lo[0].floor())), max(0, int(lo[1].floor()))
    x1, y1 = min(w, int(hi[0].ceil()) + 1), min(h, int(hi[1].ceil()) + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:  # the crop lies off the view: sample the whole view (border padding)
        x0, y0, x1, y1 = 0, 0, w, h
    shifted = a.clone()
    shifted[:, 2] -= torch.tensor([float(x0), float(y0)], dtype=torch.float64)
    return affine_patch(image[..., y0:y1, x0:x1], shifted, (size, size))


class ArcFaceCropTarget(Target):
    """A face target that embeds the ArcFace-aligned 112x112 crop of each face with ``net``.

    Subclasses set ``info`` and ``embedding_dim``; ``net`` maps (N, 3, 112, 112) RGB in [0, 1] to (N, D).
    A subclass may set another ``crop_size`` and override :meth:`crop_geometry` for another crop.
    """

    embedding_dim: int
    #: Side of the square crop ``net`` takes.
    crop_size: ClassVar[int] = CROP_SIZE

    def __init__(self, net: nn.Module, goal: float | None = None) -> None:
        super().__init__(goal)
        self.net = net

    def crop_geometry(self, face: Face) -> Tensor:
        """Affine (2, 3) float64 from crop pixels to image pixels for ``face``: the ArcFace eye alignment."""
        return crop_to_image(face.landmarks, self.crop_size)

    def crops(self, scene: Scene) -> Tensor:
        """The aligned crops of every face, (N, 3, crop_size, crop_size) in [0, 1], differentiable in the views."""
        size = self.crop_size
        if not scene.faces:
            return scene.whole.new_zeros((0, 3, size, size))
        return torch.cat([sample_crop(v.image, crop_to_view(v, size, self.crop_geometry(v.face)), size) for v in scene.faces])

    def embed(self, scene: Scene) -> Tensor:
        """One embedding per face in ``scene.faces`` (compare by cosine); (0, D) without faces."""
        if not scene.faces:
            return no_rows(scene.whole, self.embedding_dim)
        return self.net(self.crops(scene))


class TfjsCropNet(nn.Module):
    """A TF.js face graph behind a torch interface: (N, 3, 112, 112) RGB in [0, 1] -> (N, D).

    Subclasses say how their graph wants the pixels (:meth:`graph_input`: range, channel order, NHWC).
    """

    def __init__(self, graph: TfjsGraph) -> None:
        super().__init__()
        self.graph = graph

    @classmethod
    def from_file(cls, json_path: str | Path) -> "TfjsCropNet":
        """Load the graph's ``.json`` and its ``.bin`` (the only place these modules touch files)."""
        return cls(TfjsGraph(load_graph_model(json_path)))

    def graph_input(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1:] != (3, CROP_SIZE, CROP_SIZE):
            raise ValueError(f"expected (N, 3, {CROP_SIZE}, {CROP_SIZE}) RGB in [0, 1], got {tuple(x.shape)}")
        return self.graph(self.graph_input(x))


class CropNetFile(Protocol):
    """A crop network class that reads its model's main file (the others lie beside it)."""

    def from_file(self, path: Path) -> nn.Module: ...


def load_crop_target(target_cls: type[ArcFaceCropTarget], net_cls: CropNetFile, model: str,
                     device: torch.device | str, goal: float | None, weights_dir: str | Path | None) -> ArcFaceCropTarget:
    """``target_cls`` around ``net_cls`` read from ``model``'s files (:mod:`ghostmesh_daemon.model_files`);
    ``weights_dir`` replaces the lookup (else :func:`~ghostmesh_daemon.model_files.locate`'s folders). Raises
    :class:`~ghostmesh_daemon.errors.ModelUnavailable` naming how to get the files when they are missing."""
    return target_cls(net_cls.from_file(locate(model, folder=weights_dir).path), goal).to(device).eval()
