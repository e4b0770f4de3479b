"""What the engine knows about a photo: faces found on the clean image and the views it renders.

A *view* is a rectangle of the full-resolution photo sampled at a (possibly lower) resolution.
The engine never renders the whole protected photo at full resolution while optimizing: it renders
one view of the whole photo at the work resolution (for image encoders and the whole-photo LPIPS)
and one full-detail view per face (for face encoders and the per-face LPIPS). That is what makes a
step cost about what the models cost (see ``notes/feasibility.md``: the full-resolution warp was the
biggest cost of the prototype).

All coordinates are in full-resolution pixels, x to the right and y down, pixel centres at integers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class Face:
    """One face found on the clean photo (by the shell's detector; the engine never detects).

    ``chip_to_image`` maps dlib-chip pixel coordinates (150x150, padding 0.25, as
    ``dlib.get_face_chip_details`` defines them) to full-resolution image pixels:
    ``[x, y] = A @ [c, r, 1]``, shape (2, 3). ``landmarks`` are dlib's 5 points, shape (5, 2).
    """

    box: tuple[float, float, float, float]
    landmarks: Tensor
    chip_to_image: Tensor
    chip_size: int = 150

    def scaled(self, sx: float, sy: float) -> "Face":
        """The same face in a copy of the photo resized by (sx, sy) (pixel centres stay centres)."""
        m = torch.tensor([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
        a = torch.eye(3, dtype=torch.float64)
        a[:2] = self.chip_to_image.double()
        x0, y0, x1, y1 = self.box
        pts = self.landmarks.double() * torch.tensor([sx, sy], dtype=torch.float64) + torch.tensor([0.5 * sx - 0.5, 0.5 * sy - 0.5], dtype=torch.float64)
        return Face(box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy), landmarks=pts.float(),
                    chip_to_image=(m @ a)[:2].float(), chip_size=self.chip_size)

    def moved(self, transform: Tensor, mirrored: bool = False) -> "Face":
        """This face in an image moved by the affine ``transform`` (3, 3, image pixels to image pixels).

        With ``mirrored`` the transform is a reflection (the pixels were flipped with it): the chip's
        own x axis is reversed too, so that cutting the chip from the flipped pixels gives the mirror
        image of the original chip, and the eyes' landmarks trade places (dlib's points 0-1 are the
        image-right eye, 2-3 the image-left), so a crop aligned on the eyes is mirrored the same way.
        """
        t = transform.double()
        a = torch.eye(3, dtype=torch.float64)
        a[:2] = self.chip_to_image.double()
        a = t @ a
        pts = self.landmarks.double() @ t[:2, :2].T + t[:2, 2]
        if mirrored:
            n = self.chip_size - 1
            a = a @ torch.tensor([[-1.0, 0.0, n], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
            pts = pts[[2, 3, 0, 1, 4]]
        x0, y0, x1, y1 = self.box
        box = torch.tensor([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=torch.float64) @ t[:2, :2].T + t[:2, 2]
        lo, hi = box.min(0).values.tolist(), box.max(0).values.tolist()
        return Face(box=(lo[0], lo[1], hi[0], hi[1]), landmarks=pts.float(), chip_to_image=a[:2].float(),
                    chip_size=self.chip_size)

    def chip_corners(self) -> Tensor:
        """The four corners of the chip square in image pixels, shape (4, 2)."""
        n = self.chip_size - 1
        corners = torch.tensor([[0.0, 0.0, 1.0], [n, 0.0, 1.0], [n, n, 1.0], [0.0, n, 1.0]], dtype=torch.float64)
        return (corners @ self.chip_to_image.double().T).float()


@dataclass(frozen=True)
class ViewGeometry:
    """A rectangle ``box = (x0, y0, x1, y1)`` (integer pixels, x1/y1 exclusive) sampled at ``size = (h, w)``."""

    box: tuple[int, int, int, int]
    size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """View pixels per image pixel, (sy, sx)."""
        x0, y0, x1, y1 = self.box
        return self.size[0] / (y1 - y0), self.size[1] / (x1 - x0)

    def image_to_view(self) -> Tensor:
        """Affine (2, 3) mapping image pixel coordinates to this view's pixel coordinates.

        Pixel centres map to pixel centres under area resampling: v = (p - x0 + 0.5) * s - 0.5.
        """
        x0, y0, _, _ = self.box
        sy, sx = self.scale
        return torch.tensor([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5]], dtype=torch.float64)


@dataclass
class FaceView:
    """A rendered view around one face: ``image`` (1, 3, h, w) in [0, 1] and how it maps to the photo."""

    face: Face
    geometry: ViewGeometry
    image: Tensor

    def chip_to_view(self) -> Tensor:
        """Affine (2, 3) from dlib-chip pixels to this view's pixels."""
        a = torch.eye(3, dtype=torch.float64)
        a[:2] = self.face.chip_to_image.double()
        return (self.geometry.image_to_view() @ a).float()


@dataclass
class Scene:
    """What targets and losses see of one candidate (or the clean photo).

    ``whole`` is the whole photo at the work resolution, (1, 3, h, w) in [0, 1]; ``faces`` holds one
    view per face found on the clean photo (empty when none was found).
    """

    whole: Tensor
    faces: list[FaceView] = field(default_factory=list)
