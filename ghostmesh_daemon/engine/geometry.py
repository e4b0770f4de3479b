"""Differentiable resampling: the squash image encoders see, downscaling, affine chips.

Pure functions on tensors of shape (1, C, H, W) with values in [0, 1]. Coordinates follow
``grid_sample``'s ``align_corners=False`` convention: pixel centres at integers, and the image spans
[-0.5, W - 0.5] in pixels or [-1, 1] normalised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def check_image(x: Tensor, name: str = "image") -> None:
    """Raise if ``x`` is not (B, C, H, W) floating point."""
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"expected {name} of shape (B, C, H, W), floating point; got {tuple(x.shape)} {x.dtype}")


def squash(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize to ``size`` without keeping the aspect ratio, bicubic with antialiasing.

    This is what Hugging Face's SigLIP image processor does (PIL ``resize`` with BICUBIC, which is
    antialiased), made differentiable; gradients only transfer if the two agree.

    >>> squash(torch.rand(1, 3, 600, 800), (384, 384)).shape
    torch.Size([1, 3, 384, 384])
    """
    check_image(x)
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)


def fit_within(h: int, w: int, longest: int) -> tuple[int, int]:
    """(h, w) scaled down (never up) so the longer side is at most ``longest``."""
    s = min(1.0, longest / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def downscale(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Antialiased (area-like) resize to ``size``; identity when the size already matches."""
    check_image(x)
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def pixel_to_normalized(points: Tensor, h: int, w: int) -> Tensor:
    """Pixel coordinates (..., 2) as (x, y) to grid_sample's normalised coordinates."""
    scale = torch.tensor([2.0 / w, 2.0 / h], device=points.device, dtype=points.dtype)
    return (points + 0.5) * scale - 1.0


def affine_patch(image: Tensor, patch_to_image: Tensor, size: tuple[int, int]) -> Tensor:
    """Sample a (1, C, h, w) patch whose pixel (c, r) lies at ``patch_to_image @ [c, r, 1]`` in ``image``.

    When the patch covers more than twice its size, the image is first halved (with antialiasing)
    as many times as dlib's chip extractor goes down its image pyramid: while the halved area is
    still larger than the patch. Bilinear sampling does the rest, as in dlib, so the descriptor sees
    the chip dlib would cut.
    """
    check_image(image)
    a = patch_to_image.to(dtype=torch.float64, device="cpu")
    step = math.sqrt(abs(float(torch.det(a[:, :2]))))  # image pixels per patch pixel
    h_img, w_img = image.shape[-2:]
    levels = max(0, math.ceil(math.log2(step)) - 1) if step > 1 else 0
    if levels:
        factor = 2.0**levels
        small = (max(1, round(h_img / factor)), max(1, round(w_img / factor)))
        fy, fx = h_img / small[0], w_img / small[1]
        image = downscale(image, small)
        # image pixel p -> small pixel (p + 0.5) / f - 0.5
        to_small = torch.tensor([[1 / fx, 0, 0.5 / fx - 0.5], [0, 1 / fy, 0.5 / fy - 0.5], [0, 0, 1]], dtype=torch.float64)
        a = (to_small @ torch.cat([a, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)]))[:2]
        h_img, w_img = small
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1) @ a.T  # (h, w, 2) image pixels
    grid = pixel_to_normalized(pts, h_img, w_img).to(device=image.device, dtype=image.dtype)
    return F.grid_sample(image, grid[None], mode="bilinear", padding_mode="border", align_corners=False)


def bounding_box(points: Tensor, h: int, w: int, pad: float = 0.0) -> tuple[int, int, int, int]:
    """Integer box (x0, y0, x1, y1) around ``points`` (N, 2), grown by ``pad`` px, clipped to the image."""
    lo = points.min(dim=0).values - pad
    hi = points.max(dim=0).values + pad
    x0, y0 = max(0, math.floor(float(lo[0]))), max(0, math.floor(float(lo[1])))
    x1, y1 = min(w, math.ceil(float(hi[0])) + 1), min(h, math.ceil(float(hi[1])) + 1)
    return x0, y0, x1, y1
