"""Loss terms: identity (push each target's embedding away from the original) and the LPIPS hinges."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .geometry import downscale, fit_within


def identity_term(similarity: Tensor, done: Tensor) -> Tensor:
    """Sum of cosine similarities of rows not yet past their goal (the optional identity margin).

    Rows past the goal stop contributing, so the budget is spent on those still recognisable.
    """
    return (similarity * (~done).to(similarity.dtype)).sum()


def hinge(value: Tensor, budget: float) -> Tensor:
    """relu(value - budget): free below the budget, linear above it."""
    return F.relu(value - budget)


def lpips_distance(lpips: nn.Module, a: Tensor, b: Tensor, longest: int | None = None) -> Tensor:
    """LPIPS between two [0, 1] images, optionally both downscaled so the longer side is ``longest``."""
    if longest is not None:
        size = fit_within(a.shape[-2], a.shape[-1], longest)
        a, b = downscale(a, size), downscale(b, size)
    return lpips(a, b, normalize=True).reshape(())


def psnr(a: Tensor, b: Tensor) -> float:
    mse = float((a - b).pow(2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004) on luma, Gaussian window; inputs (1, 3, H, W) in [0, 1]."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=a.device, dtype=a.dtype).reshape(1, 3, 1, 1)
    ya, yb = (a * weights).sum(1, keepdim=True), (b * weights).sum(1, keepdim=True)
    g = torch.exp(-((torch.arange(window, device=a.device, dtype=a.dtype) - window // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()

    def blur(t: Tensor) -> Tensor:
        t = F.conv2d(t, g.reshape(1, 1, 1, -1))
        return F.conv2d(t, g.reshape(1, 1, -1, 1))

    c1, c2 = 0.01**2, 0.03**2
    ma, mb = blur(ya), blur(yb)
    va, vb, cov = blur(ya * ya) - ma**2, blur(yb * yb) - mb**2, blur(ya * yb) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
    return float(s.mean())
