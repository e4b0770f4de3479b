"""Loss terms: identity (push each target's embedding away from the original) and the LPIPS hinges."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class ViewDraw:
    """One random way of looking at a crop (E-LPIPS, Kettunen et al. 2019): drop ``shift`` rows and
    columns at the top left (so AlexNet's stride-4 grid falls elsewhere), mirror, and scale. LPIPS
    judged through random views is much harder to fool with a texture tuned to one fixed view."""

    shift: tuple[int, int]
    flip: bool
    scale: float


def draw_view(generator: torch.Generator, max_shift: int = 7, scales: tuple[float, float] = (0.5, 1.0)) -> ViewDraw:
    u = torch.rand(4, generator=generator).tolist()
    return ViewDraw(shift=(int(u[0] * (max_shift + 1)), int(u[1] * (max_shift + 1))), flip=u[2] < 0.5,
                    scale=scales[0] + (scales[1] - scales[0]) * u[3])


#: AlexNet's second max-pool needs at least this many pixels on the short side: smaller crops (a
#: face of a few dozen pixels) are compared enlarged to it, which hides nothing.
MIN_SIDE = 32


def _at_least(size: tuple[int, int], side: int = MIN_SIDE) -> tuple[int, int]:
    s = max(1.0, side / min(size))
    return max(side, round(size[0] * s)), max(side, round(size[1] * s))


def _viewed(x: Tensor, d: ViewDraw) -> Tensor:
    dy, dx = d.shift
    if min(x.shape[-2] - dy, x.shape[-1] - dx) >= MIN_SIDE:
        x = x[..., dy:, dx:]
    if d.flip:
        x = x.flip(-1)
    small = (round(x.shape[-2] * d.scale), round(x.shape[-1] * d.scale))
    if d.scale < 0.99 and min(small) >= MIN_SIDE:
        x = downscale(x, small)
    return F.interpolate(x, size=_at_least(tuple(x.shape[-2:])), mode="bilinear", align_corners=False) \
        if min(x.shape[-2:]) < MIN_SIDE else x


class ReferenceLPIPS:
    """LPIPS against one fixed reference image, whose features are computed once.

    The optimizer compares every candidate with the same clean photo (and the same face crops), so
    recomputing the reference's AlexNet features each step would waste a third of LPIPS's cost. The
    arithmetic is ``lpips.LPIPS.forward``'s (v0.1, linear heads, spatial average) with the reference
    half cached; a test checks the two agree. ``longest=None`` compares at the reference's own size:
    the native measure every decision uses.
    """

    def __init__(self, lpips: nn.Module, reference: Tensor, longest: int | None = None) -> None:
        self.lpips = lpips
        size = fit_within(reference.shape[-2], reference.shape[-1], longest) if longest else tuple(reference.shape[-2:])
        self.size = _at_least(size)
        with torch.no_grad():
            self.image = self._resized(reference)
            self.reference = self._features(self.image)

    def _features(self, x: Tensor) -> list[Tensor]:
        from lpips import normalize_tensor

        outs = self.lpips.net.forward(self.lpips.scaling_layer(2 * x - 1))
        return [normalize_tensor(outs[k]) for k in range(self.lpips.L)]

    def _distance(self, feats: list[Tensor], reference: list[Tensor]) -> Tensor:
        total = feats[0].new_zeros(())
        for k, (a, b) in enumerate(zip(feats, reference)):
            total = total + self.lpips.lins[k]((a - b) ** 2).mean()
        return total

    def _resized(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) == tuple(self.size):
            return x
        if x.shape[-2] >= self.size[0]:
            return downscale(x, self.size)
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)  # a tiny crop, enlarged

    def __call__(self, candidate: Tensor, view: ViewDraw | None = None) -> Tensor:
        """LPIPS of ``candidate`` against the reference; through the random ``view`` when given."""
        candidate = self._resized(candidate)
        if view is None:
            return self._distance(self._features(candidate), self.reference)
        with torch.no_grad():
            reference = self._features(_viewed(self.image, view))
        return self._distance(self._features(_viewed(candidate, view)), reference)


@torch.no_grad()
def tiled_lpips(lpips: nn.Module, a: Tensor, b: Tensor, tile: int = 1024) -> float:
    """LPIPS of two whole photos at their own resolution: tiles of at most ``tile`` px, area-weighted.

    A photo measured at 256 px hides exactly the bent lines and texture people see at 100 %; AlexNet
    on a 24 MP photo at once would need gigabytes, tiles do not.
    """
    H, W = a.shape[-2:]
    total = 0.0
    for y0, y1, x0, x1 in tiles(H, W, tile):
        ta, tb = a[..., y0:y1, x0:x1], b[..., y0:y1, x0:x1]
        if torch.equal(ta, tb):
            continue  # identical pixels: LPIPS is exactly 0
        total += float(ReferenceLPIPS(lpips, ta)(tb)) * (y1 - y0) * (x1 - x0)
    return total / (H * W)


def tiles(h: int, w: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Near-equal tiles (y0, y1, x0, x1) of at most ``tile`` px a side covering an h x w image."""
    ny, nx = -(-h // tile), -(-w // tile)
    return [(i * h // ny, (i + 1) * h // ny, j * w // nx, (j + 1) * w // nx) for i in range(ny) for j in range(nx)]


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
