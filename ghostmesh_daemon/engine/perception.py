"""What eyes forgive: the per-pixel budget of the noise and where the noise and the warp may live.

LPIPS alone is a metric the optimizer learns to fool (it finds textures LPIPS scores low and people
see at once), so the perturbation is bounded directly by what the eye can see, before any loss:

- **Luma** may change by at most a just-noticeable difference (JND) of the original at that pixel,
  at native resolution: Chou & Li's (1995) model, the larger of *luminance adaptation* (dark and
  very bright backgrounds hide more) and *texture masking* (edges, hair and beard hide more than
  smooth skin). On smooth mid-tone skin that is about 3 of 255 levels; in hair or along edges 6-12.
- **Chroma** (JPEG's Cb and Cr) may change by only a fraction of that: colour shifts are what made
  irises and skin look wrong at 100 %.
- The noise lives only on the faces (a feathered disc over each face's chip) unless an image-level
  target needs the whole photo; the **warp** lives only in the inner face, is bounded in pixels
  relative to each face's size, and fades to exactly zero outside it, so hair, glasses frames,
  jewellery and lines beside the face stay straight.

The masks are analytic in the photo's coordinates, so every view (and the final full-resolution
render) evaluates exactly the same function: the bound holds at every pixel that gets written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .eot import gaussian_blur
from .scene import Face

#: RGB -> (Y, Cb, Cr) on [0, 1] values (JPEG's matrix without the offsets); rows are Y, Cb, Cr.
RGB_TO_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
YCC_TO_RGB = torch.linalg.inv(RGB_TO_YCC)

# Chou & Li's background-luminance weights and the four directional gradient operators (5x5).
_BG = torch.tensor([[1, 1, 1, 1, 1], [1, 2, 2, 2, 1], [1, 2, 0, 2, 1], [1, 2, 2, 2, 1], [1, 1, 1, 1, 1]],
                   dtype=torch.float32) / 32
_GRAD = torch.tensor([
    [[0, 0, 0, 0, 0], [1, 3, 8, 3, 1], [0, 0, 0, 0, 0], [-1, -3, -8, -3, -1], [0, 0, 0, 0, 0]],
    [[0, 0, 1, 0, 0], [0, 8, 3, 0, 0], [1, 3, 0, -3, -1], [0, 0, -3, -8, 0], [0, 0, -1, 0, 0]],
    [[0, 0, 1, 0, 0], [0, 0, 3, 8, 0], [-1, -3, 0, 3, 1], [0, -8, -3, 0, 0], [0, 0, -1, 0, 0]],
    [[0, 1, 0, -1, 0], [0, 3, 0, -3, 0], [0, 8, 0, -8, 0], [0, 3, 0, -3, 0], [0, 1, 0, -1, 0]],
], dtype=torch.float32)[:, None] / 16


def ycc_to_rgb(ycc: Tensor) -> Tensor:
    """(B, 3, H, W) luma/chroma differences to RGB differences (linear, so offsets do not matter)."""
    return torch.einsum("ij,bjhw->bihw", YCC_TO_RGB.to(ycc), ycc)


def rgb_to_ycc(rgb: Tensor) -> Tensor:
    return torch.einsum("ij,bjhw->bihw", RGB_TO_YCC.to(rgb), rgb)


def jnd_map(x: Tensor, band: int = 1024, flat: float = 1.0) -> Tensor:
    """Chou & Li's luma JND of ``x`` (1, 3, H, W) in [0, 1], as (1, 1, H, W) in [0, 1] units
    (``flat``: see :func:`jnd_terms`)."""
    texture, luminance = jnd_terms(x, band).unbind(1)
    return torch.maximum(texture, flat * luminance)[:, None]


@torch.no_grad()
def jnd_terms(x: Tensor, band: int = 1024) -> Tensor:
    """Chou & Li's two JND terms of ``x`` (1, 3, H, W) in [0, 1], as (1, 2, H, W) in [0, 1] units:
    texture masking (edges, hair and beard hide more) and luminance adaptation (dark and very bright
    backgrounds hide more); the JND is the larger of the two.

    ``flat`` in :func:`jnd_map` scales the luminance term, which alone sets the bound where there is
    no texture: Chou & Li measured it for noise, and an optimized perturbation is not noise (on
    smooth cheeks it forms streaks people see at the noise's JND). Computed in row bands (with the
    2-pixel overlap the 5x5 operators need) so a 24 MP photo does not hold four full-size planes.
    """
    H = x.shape[-2]
    out = x.new_empty(1, 2, *x.shape[-2:])
    bg_k, grad_k = _BG.to(x)[None, None], _GRAD.to(x)
    for r0 in range(0, H, band):
        r1 = min(H, r0 + band)
        i0, i1 = max(0, r0 - 2), min(H, r1 + 2)
        y = 255.0 * torch.einsum("c,bchw->bhw", RGB_TO_YCC[0].to(x), x[..., i0:i1, :])[:, None]
        y = F.pad(y, (2, 2, 2, 2), mode="replicate")
        bg = F.conv2d(y, bg_k)
        mg = F.conv2d(y, grad_k).abs().amax(dim=1, keepdim=True)
        texture = mg * (0.0001 * bg + 0.115) + (0.5 - 0.01 * bg)
        luminance = torch.where(bg <= 127, 17 * (1 - torch.sqrt(bg.clamp(min=0) / 127)) + 3, 3 / 128 * (bg - 127) + 3)
        terms = torch.cat([texture, luminance], dim=1) / 255.0
        out[..., r0:r1, :] = terms[..., r0 - i0: r0 - i0 + (r1 - r0), :]
    return out


def smoothstep(t: Tensor) -> Tensor:
    t = t.clamp(0, 1)  # on constants (coordinates), never on a parameter
    return t * t * (3 - 2 * t)


def fade(distance: Tensor, inner: float, outer: float) -> Tensor:
    """1 up to ``inner``, easing to exactly 0 at ``outer``: the one shape of every region's edge."""
    return smoothstep((outer - distance) / (outer - inner))


@dataclass(frozen=True)
class FaceRegion:
    """One face's disc in its chip's own coordinates (a similarity of the photo, so a disc there is a
    disc here): 1 inside radius ``inner``, easing to exactly 0 at ``outer`` (fractions of the chip's
    half-side, measured from the chip's centre)."""

    image_to_chip: Tensor  # (2, 3) float64, image pixels -> chip pixels
    centre: float  # the chip's centre, chip pixels (both axes)
    half: float  # the chip's half-side, chip pixels
    side_px: float  # the chip's side in image pixels
    #: Each eye's centre (x, y) and width (corner to corner), chip pixels, from the face's landmarks.
    eyes: tuple[tuple[float, float, float], ...] = ()

    @classmethod
    def of(cls, face: Face) -> "FaceRegion":
        a = torch.eye(3, dtype=torch.float64)
        a[:2] = face.chip_to_image.double()
        inv = torch.linalg.inv(a)[:2]
        n = face.chip_size - 1
        side = float(torch.det(a[:2, :2]).abs().sqrt()) * n
        corners = face.landmarks.double() @ inv[:, :2].T + inv[:, 2]  # dlib's 5 points: 0-1, 2-3 the eyes' corners
        eyes = tuple((*((corners[i] + corners[i + 1]) / 2).tolist(), float((corners[i] - corners[i + 1]).norm()))
                     for i in (0, 2)) if len(corners) >= 4 else ()
        return cls(inv, n / 2, n / 2, side, eyes)

    def _chip(self, pixels: Tensor) -> Tensor:
        m = self.image_to_chip.to(pixels)
        return pixels @ m[:, :2].T + m[:, 2]

    def radius(self, pixels: Tensor) -> Tensor:
        """Distance of image points (..., 2) from the chip's centre, in chip half-sides."""
        return ((self._chip(pixels) - self.centre) / self.half).norm(dim=-1)

    def mask(self, pixels: Tensor, inner: float, outer: float) -> Tensor:
        return fade(self.radius(pixels), inner, outer)

    def eye_mask(self, pixels: Tensor, inner: float, outer: float) -> Tensor:
        """1 within ``inner`` eye widths of either eye's centre, easing to 0 at ``outer``."""
        chip = self._chip(pixels)
        out = torch.zeros(pixels.shape[:-1], dtype=pixels.dtype, device=pixels.device)
        for cx, cy, width in self.eyes:
            d = (chip - torch.tensor([cx, cy], dtype=chip.dtype, device=chip.device)).norm(dim=-1) / width
            out = torch.maximum(out, fade(d, inner, outer))
        return out


@dataclass(frozen=True)
class PerceptualBounds:
    """Everything that bounds the perturbation per pixel; built once per photo by :func:`shape_for`.

    ``jnd`` holds the luma bound and the chroma bound at native resolution (already scaled and
    capped), (1, 2, H, W). Chroma gets ``chroma_ratio`` of the luma bound, but never more than that
    share of the flat-region JND: texture hides a change of brightness, not a change of colour (a
    colour bound that grew with texture turned eyebrows and eyes purple). Noise lives where :meth:`noise_mask_at` is non-zero, the warp where
    :meth:`flow_limit_at` is, at most ``flow_fraction`` of each face's chip side in pixels.
    """

    jnd: Tensor  # (1, 2, H, W): luma bound, chroma bound
    chroma_ratio: float
    faces: tuple[FaceRegion, ...]
    noise_everywhere: bool
    flow_fraction: float
    noise_disc: tuple[float, float] = (0.8, 1.05)
    flow_disc: tuple[float, float] = (0.45, 0.8)
    #: The original's own luma detail, one band-pass layer per scale, (1, K, H, W), when the noise is
    #: a local re-weighting of that detail (the detail basis, ``detail_gain`` > 0) instead of free pixels.
    detail: Tensor | None = None
    #: The Gaussian scales (photo pixels) the detail layers were split at, finest first.
    detail_sigmas: tuple[float, ...] = ()
    #: The largest relative decrease and increase of each detail band's contrast (0.8 and 0.3: from
    #: x0.2 to x1.3): raising fine detail is what ages skin, so the increase is kept smaller.
    detail_gain: float = 0.0
    detail_boost: float = 0.0
    #: Luma grain on top of the detail re-weighting, at this share of the JND's texture term alone
    #: (hair, brows, lashes and edges mask it; smooth skin gets none): 0 for none.
    detail_pixels: float = 0.0
    #: The share of the noise's and the warp's bounds withheld around the eyes (0: none, 1: the eyes
    #: are left as they are): dulled whites and catch-lights and lids moved by the warp made a face
    #: look older and tired. ``eye_disc``: where, in eye widths (corner to corner) from each eye's centre.
    eye_guard: float = 0.0
    eye_disc: tuple[float, float] = (0.7, 1.2)

    @property
    def noise_channels(self) -> int:
        """Channels of the noise parameters: Y, Cb, Cr for free noise; for the detail basis one gain per
        band, after the grain's channel when it has one."""
        if self.detail is None:
            return 3
        return self.detail.shape[1] + (1 if self.detail_pixels > 0 else 0)

    @property
    def image_hw(self) -> tuple[int, int]:
        return tuple(self.jnd.shape[-2:])

    def _pixels(self, coords: Tensor) -> Tensor:
        """Photo-normalised coordinates (1, h, w, 2) to image pixel coordinates (centres at integers)."""
        H, W = self.image_hw
        return torch.stack([(coords[..., 0] + 1) * (W / 2) - 0.5, (coords[..., 1] + 1) * (H / 2) - 0.5], dim=-1).double()

    def noise_mask_at(self, coords: Tensor) -> Tensor:
        """(1, 1, h, w): where the noise may live, 0..1 (nowhere around the eyes under ``eye_guard``)."""
        if self.noise_everywhere:
            return self._guarded(coords, coords.new_ones(1, 1, *coords.shape[1:3]))
        return self._guarded(coords, self._union(coords, lambda f, p: f.mask(p, *self.noise_disc)))

    def flow_limit_at(self, coords: Tensor) -> Tensor:
        """(1, 1, h, w): the largest displacement allowed at each point, in image pixels (none around
        the eyes under ``eye_guard``)."""
        return self._guarded(coords, self._union(coords, lambda f, p: f.mask(p, *self.flow_disc) * (self.flow_fraction * f.side_px)))

    def _guarded(self, coords: Tensor, bound: Tensor) -> Tensor:
        if self.eye_guard <= 0:
            return bound
        return bound * (1 - self.eye_guard * self._union(coords, lambda f, p: f.eye_mask(p, *self.eye_disc)))

    def _union(self, coords: Tensor, per_face) -> Tensor:
        pixels = self._pixels(coords)
        out = torch.zeros(coords.shape[:3], dtype=torch.float64, device=coords.device)
        for f in self.faces:
            out = torch.maximum(out, per_face(f, pixels))
        return out.to(coords.dtype)[:, None]

    def channel_bounds(self, jnd: Tensor) -> Tensor:
        """(1, 2, h, w) luma and chroma bounds -> (1, 3, h, w) bounds for (Y, Cb, Cr); a third plane
        (the texture-masked grain's bound, detail basis) is passed on as a fourth channel."""
        return torch.cat([jnd[:, :1], jnd[:, 1:2], jnd[:, 1:2], jnd[:, 2:]], dim=1)


#: Scales (Gaussian sigma, photo pixels) that split the luma into detail bands: fine grain and pores,
#: skin texture and lashes, features' edges, and the shading that models a face's shape.
DETAIL_SIGMAS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)


@torch.no_grad()
def detail_layers(x: Tensor, sigmas: tuple[float, ...] = DETAIL_SIGMAS) -> Tensor:
    """The luma of ``x`` (1, 3, H, W) split into band-pass layers, (1, K, H, W): ``Y - G(s1)``,
    ``G(s1) - G(s2)``, ... (``G(s)``: Gaussian blur of sigma ``s`` pixels). Their sum plus the
    coarsest blur is the luma again, so a gain of 1 on every band is the photo itself."""
    y = torch.einsum("c,bchw->bhw", RGB_TO_YCC[0].to(x), x)[:, None]
    layers, previous = [], y
    for sigma in sigmas:
        blurred = gaussian_blur(y, sigma)
        layers.append(previous - blurred)
        previous = blurred
    return torch.cat(layers, dim=1)


def shape_for(x: Tensor, faces: list[Face] | tuple[Face, ...], *, noise_limit: float, jnd_scale: float,
              chroma_ratio: float, flow_fraction: float, noise_everywhere: bool, flat: float = 1.0,
              detail_bands: int = 0, detail_gain: float = 0.0, detail_boost: float = 0.0,
              detail_pixels: float = 0.0, detail_scale: float = 1.0, eye_guard: float = 0.0) -> PerceptualBounds:
    """The per-pixel bounds for photo ``x``: its JND scaled by ``jnd_scale`` and capped at ``noise_limit``
    (with ``detail_bands``, also its first that many detail layers of :data:`DETAIL_SIGMAS`, each scale
    times ``detail_scale``)."""
    texture, luminance = (jnd_terms(x) * jnd_scale).unbind(1)
    luma = torch.maximum(texture, flat * luminance).clamp(max=noise_limit)
    chroma = chroma_ratio * torch.minimum(luma, luminance)
    if not 0 <= detail_bands <= len(DETAIL_SIGMAS):
        raise ValueError(f"0 to {len(DETAIL_SIGMAS)} detail bands (scales {DETAIL_SIGMAS} px), got {detail_bands}")
    if not detail_scale > 0:
        raise ValueError(f"detail_scale must be > 0, got {detail_scale}")
    sigmas = tuple(detail_scale * s for s in DETAIL_SIGMAS[:detail_bands])
    detail = detail_layers(x, sigmas) if detail_bands else None
    planes = [luma, chroma] + ([texture.clamp(0, noise_limit)] if detail is not None and detail_pixels > 0 else [])
    return PerceptualBounds(torch.stack(planes, dim=1), chroma_ratio, tuple(FaceRegion.of(f) for f in faces),
                            noise_everywhere, flow_fraction, detail=detail, detail_sigmas=sigmas,
                            detail_gain=detail_gain, detail_boost=detail_boost, detail_pixels=detail_pixels,
                            eye_guard=eye_guard)


def uniform_bounds(image_hw: tuple[int, int], faces=(), *, limit: float = 0.05, chroma_ratio: float = 1.0,
                   flow_fraction: float = 0.03, noise_everywhere: bool = True) -> PerceptualBounds:
    """The same luma bound everywhere (tests and synthetic checks)."""
    bounds = torch.tensor([limit, chroma_ratio * limit], dtype=torch.float32).reshape(1, 2, 1, 1).expand(1, 2, *image_hw)
    return PerceptualBounds(bounds.contiguous(), chroma_ratio,
                            tuple(FaceRegion.of(f) for f in faces), noise_everywhere, flow_fraction)


def rgb_limit(luma_limit: float, chroma_ratio: float) -> float:
    """The largest change of any RGB channel when luma moves by at most ``luma_limit`` and each chroma
    by ``chroma_ratio`` of it (blue = Y + 1.772 Cb is the channel that can move most)."""
    return luma_limit * float(YCC_TO_RGB.abs()[:, 1:].sum(1).max() * chroma_ratio + 1)
