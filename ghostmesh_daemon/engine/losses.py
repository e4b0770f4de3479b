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


class ReferenceLPIPS:
    """LPIPS against one fixed reference image, whose features are computed once.

    The optimizer compares every candidate with the same clean photo (and the same face crops), so
    recomputing the reference's AlexNet features each step would waste a third of LPIPS's cost. The
    arithmetic is ``lpips.LPIPS.forward``'s (v0.1, linear heads, spatial average) with the reference
    half cached; a test checks the two agree.
    """

    def __init__(self, lpips: nn.Module, reference: Tensor, longest: int | None = None) -> None:
        self.lpips = lpips
        self.size = fit_within(reference.shape[-2], reference.shape[-1], longest) if longest else tuple(reference.shape[-2:])
        with torch.no_grad():
            self.reference = self._features(downscale(reference, self.size))

    def _features(self, x: Tensor) -> list[Tensor]:
        from lpips import normalize_tensor

        outs = self.lpips.net.forward(self.lpips.scaling_layer(2 * x - 1))
        return [normalize_tensor(outs[k]) for k in range(self.lpips.L)]

    def __call__(self, candidate: Tensor) -> Tensor:
        feats = self._features(downscale(candidate, self.size))
        total = candidate.new_zeros(())
        for k, (a, b) in enumerate(zip(feats, self.reference)):
            total = total + self.lpips.lins[k]((a - b) ** 2).mean()
        return total


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
