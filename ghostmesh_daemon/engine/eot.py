"""Expectation over transformations: random, differentiable versions of what an upload goes through.

Platforms resize uploads and re-encode them as JPEG; a perturbation tuned only to the exact pixels
can be washed out by that. During optimization each target may also see the candidate after a random
draw of: a shift of a few pixels (so JPEG blocks and the crop move), a downscale to 0.3-1.0 of the
size and back, a slight blur, and a differentiable JPEG at quality 60-95.

The JPEG is the standard pipeline (YCbCr, subsampled chroma, 8x8 DCT, quantization tables) with the
rounding replaced by ``round(x) + (x - round(x))**3``, which has the right values and a usable
gradient (Shin & Song, 2017). The same round trip with the original file's own tables
(:class:`JpegCodec`) lets the optimizer see the photo as it will be written: JPEG-quantizing a
perturbation blocks it up, which on the shared faces raised the face LPIPS of the written file by
about 0.01 over what the optimizer measured on its float pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import check_image
from .scene import FaceView

# IJG (libjpeg) base tables, quality 50.
_LUMA = torch.tensor([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=torch.float32).reshape(8, 8)
_CHROMA = torch.tensor([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32, dtype=torch.float32).reshape(8, 8)


def quant_table(base: Tensor, quality: float) -> Tensor:
    """libjpeg's quality scaling of a base table (``jpeg_quality_scaling``)."""
    q = min(max(float(quality), 1.0), 100.0)
    scale = 5000.0 / q if q < 50 else 200.0 - 2.0 * q
    return ((base * scale + 50.0) / 100.0).floor().clamp(1, 255)


def _dct_matrix(device, dtype) -> Tensor:
    k = torch.arange(8, device=device, dtype=dtype)
    m = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] = m[0] / math.sqrt(2)
    return m  # orthonormal DCT-II: coefficients = M @ block @ M.T


def soft_round(x: Tensor) -> Tensor:
    """Rounding with the value of ``round`` and a non-zero gradient everywhere."""
    r = torch.round(x)
    return r + (x - r) ** 3


def _blocks_quantize(plane: Tensor, table: Tensor, m: Tensor, rounding=soft_round) -> Tensor:
    """Quantize one (N, 1, H, W) plane (H, W multiples of 8) in 8x8 DCT blocks, values in 0..255 - 128."""
    n, _, h, w = plane.shape
    b = plane.reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)  # (n, by, bx, 8, 8)
    coeffs = m @ b @ m.T
    coeffs = rounding(coeffs / table) * table
    b = m.T @ coeffs @ m
    return b.permute(0, 1, 3, 2, 4).reshape(n, 1, h, w)


@dataclass(frozen=True)
class JpegCodec:
    """A JPEG encoder's settings: quantization tables (64 values each, natural row-major order, as
    Pillow reports them) and chroma subsampling as (vertical, horizontal) factors."""

    luma: tuple[int, ...]
    chroma: tuple[int, ...]
    subsampling: tuple[int, int] = (2, 2)

    def __post_init__(self) -> None:
        if len(self.luma) != 64 or len(self.chroma) != 64:
            raise ValueError("quantization tables must have 64 entries each")
        if self.subsampling not in ((1, 1), (1, 2), (2, 1), (2, 2)):
            raise ValueError(f"unsupported chroma subsampling {self.subsampling}")

    @classmethod
    def from_quality(cls, quality: float, subsampling: tuple[int, int] = (2, 2)) -> "JpegCodec":
        """libjpeg's standard tables at ``quality`` (what ``quality=`` in an encoder gives)."""
        return cls(tuple(int(v) for v in quant_table(_LUMA, quality).flatten()),
                   tuple(int(v) for v in quant_table(_CHROMA, quality).flatten()), subsampling)

    @classmethod
    def from_pillow(cls, tables: list[list[int]] | None, quality: float, subsampling: int) -> "JpegCodec":
        """What Pillow's encoder does with ``qtables=tables`` (per component: Y, Cb[, Cr]; Cr's is not
        modelled apart from Cb's) or, without tables, ``quality``; ``subsampling`` is its code
        (0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0)."""
        factors = {0: (1, 1), 1: (1, 2), 2: (2, 2)}[subsampling]
        if not tables:
            return cls.from_quality(quality, factors)
        return cls(tuple(tables[0]), tuple(tables[1] if len(tables) > 1 else tables[0]), factors)


def jpeg(x: Tensor, quality: float) -> Tensor:
    """Differentiable JPEG round trip of (1, 3, H, W) RGB in [0, 1] at libjpeg ``quality`` (4:2:0 chroma)."""
    return jpeg_round_trip(x, JpegCodec.from_quality(quality))


def jpeg_round_trip(x: Tensor, codec: JpegCodec, origin: tuple[int, int] = (0, 0), exact: bool = False) -> Tensor:
    """Differentiable JPEG round trip of (1, 3, H, W) RGB in [0, 1] with ``codec``.

    ``origin`` is the (y, x) of ``x``'s top-left pixel in the photo the encoder will see, so that the
    8x8 blocks (and the chroma cells) fall where the encoder's will; the part of a block outside ``x``
    is filled by replicating its edge. ``exact`` rounds exactly (no useful gradient): for measuring
    what a file will hold, as the optimizer does with the photo's own codec; it never follows a
    gradient through that rounding, which led it into block artifacts. Random upload draws use the
    soft rounding, whose gradient is averaged over qualities and shifts.
    """
    rounding = torch.round if exact else soft_round
    check_image(x)
    _, _, h, w = x.shape
    sv, sh = codec.subsampling
    cell_y, cell_x = 8 * sv, 8 * sh
    top, left = origin[0] % cell_y, origin[1] % cell_x
    bottom, right = (-(h + top)) % cell_y, (-(w + left)) % cell_x
    y = F.pad(x, (left, right, top, bottom), mode="replicate") * 255.0
    r, g, b = y[:, 0:1], y[:, 1:2], y[:, 2:3]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    m = _dct_matrix(x.device, x.dtype)
    lt = torch.tensor(codec.luma, dtype=x.dtype, device=x.device).reshape(8, 8)
    ct = torch.tensor(codec.chroma, dtype=x.dtype, device=x.device).reshape(8, 8)
    luma = _blocks_quantize(luma - 128.0, lt, m, rounding) + 128.0
    chroma = torch.cat([cb, cr])
    if (sv, sh) != (1, 1):
        chroma = F.avg_pool2d(chroma, (sv, sh))
    chroma = _blocks_quantize(chroma, ct, m, rounding)
    if (sv, sh) != (1, 1):
        chroma = F.interpolate(chroma, size=luma.shape[-2:], mode="bilinear", align_corners=False)
    cb, cr = chroma[0:1], chroma[1:2]
    out = torch.cat([luma + 1.402 * cr, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.772 * cb], dim=1) / 255.0
    return out[..., top:top + h, left:left + w]


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """``x`` blurred by one Gaussian of ``sigma`` pixels, edges replicated. Separable taps, because
    its callers blur by a pixel or two (an upload's softening, the grain's high-pass, a view's coarse
    luma) where a few taps are cheaper than the two FFTs of :func:`gaussian_blur_channels`, which
    serves the wide, per-band blurs."""
    if sigma <= 0.05:
        return x
    radius = max(1, math.ceil(2.5 * sigma))
    k = torch.exp(-(torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).reshape(1, 1, 1, -1).repeat(x.shape[1], 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k, groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.transpose(-1, -2), groups=x.shape[1])


def gaussian_blur_channels(x: Tensor, sigmas: list[float] | tuple[float, ...]) -> Tensor:
    """Each channel of ``x`` (B, C, H, W) blurred by its own Gaussian ``sigmas[c]`` (pixels), edges
    replicated. By FFT, so a 12 px blur costs what a 1 px one does: separable convolutions of
    that width made the detail basis's step 1.6x its models' time. Replicate padding of 4 sigma keeps
    the circular wrap-around below 1e-4 of a value."""
    r = max(1, math.ceil(4 * max(sigmas)))
    h, w = x.shape[-2:]
    padded = F.pad(x, (r, r, r, r), mode="replicate")
    H, W = padded.shape[-2:]
    fy = torch.fft.fftfreq(H, device=x.device, dtype=x.dtype)[:, None]
    fx = torch.fft.rfftfreq(W, device=x.device, dtype=x.dtype)[None, :]
    var = torch.tensor(sigmas, device=x.device, dtype=x.dtype).reshape(1, -1, 1, 1) ** 2
    transfer = torch.exp(-2 * math.pi**2 * var * (fy**2 + fx**2))
    out = torch.fft.irfft2(torch.fft.rfft2(padded) * transfer, s=(H, W))
    return out[..., r:r + h, r:r + w]


@dataclass(frozen=True)
class UploadDraw:
    """One random draw of an upload's transformations (shared by every view of one sample)."""

    scale: float
    sigma: float
    quality: float
    shift: tuple[int, int]


def draw(generator: torch.Generator, scale=(0.3, 1.0), quality=(60.0, 95.0), max_sigma: float = 0.8,
         max_shift: int = 4) -> UploadDraw:
    u = torch.rand(5, generator=generator).tolist()
    return UploadDraw(
        scale=scale[0] + (scale[1] - scale[0]) * u[0],
        sigma=max_sigma * u[1],
        quality=quality[0] + (quality[1] - quality[0]) * u[2],
        shift=(round((2 * u[3] - 1) * max_shift), round((2 * u[4] - 1) * max_shift)),
    )


@dataclass(frozen=True)
class AlignDraw:
    """One random re-alignment of the faces (input diversity): how differently another face
    recogniser's detector and landmarks might crop the same face. ``scale`` and ``angle`` (radians)
    act about the chip's centre, ``shift`` is a fraction of the chip's side, ``mirrored`` shows
    every target its crop's mirror image (face models see both, from training augmentation)."""

    scale: float
    angle: float
    shift: tuple[float, float]
    mirrored: bool


def draw_alignment(generator: torch.Generator, jitter: float = 0.15, mirror: bool = True) -> AlignDraw:
    """Scale within 1 +- ``jitter``, angle within +- ``jitter`` rad, shift within +- ``jitter / 2``."""
    u = torch.rand(5, generator=generator).tolist()
    return AlignDraw(scale=1 + jitter * (2 * u[0] - 1), angle=jitter * (2 * u[1] - 1),
                     shift=(jitter * (u[2] - 0.5), jitter * (u[3] - 0.5)), mirrored=mirror and u[4] < 0.5)


def realign(view: FaceView, d: AlignDraw) -> FaceView:
    """``view`` as the re-alignment ``d`` crops it: the face's chip moved by a similarity about its
    centre, in the chip's own axes (so a tilted face tilts with it); when mirrored, the view's pixels
    flipped left to right and the face with them, so every target sees the mirror image of its crop."""
    face = view.face
    a = face.chip_to_image.double()
    n = face.chip_size - 1
    centre = a @ torch.tensor([n / 2, n / 2, 1.0], dtype=torch.float64)
    side = float(torch.det(a[:, :2]).abs().sqrt()) * n  # the chip's side in image pixels
    basis = torch.stack([a[:, 0] / a[:, 0].norm(), a[:, 1] / a[:, 1].norm()], dim=1)  # chip axes in the image
    c, s = math.cos(d.angle), math.sin(d.angle)
    m = basis @ (d.scale * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)) @ basis.T
    t = torch.eye(3, dtype=torch.float64)
    t[:2, :2] = m
    t[:2, 2] = centre - m @ centre + basis @ torch.tensor(d.shift, dtype=torch.float64) * side
    face = face.moved(t)
    image = view.image
    if d.mirrored:
        x0, _, x1, _ = view.geometry.box  # flipping the view reflects the photo about the view's centre
        flip = torch.tensor([[-1.0, 0.0, x0 + x1 - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        face, image = face.moved(flip, mirrored=True), image.flip(-1)
    return FaceView(face, view.geometry, image)


def apply(x: Tensor, d: UploadDraw, view_scale: float = 1.0) -> Tensor:
    """``x`` (a view, ``view_scale`` view pixels per photo pixel) as it would come back from an upload.

    The shift is done by replicate-padding and cropping, so the view keeps its size and its mapping
    to the photo moves by at most a few pixels (what a platform's crop does to alignment).
    """
    check_image(x)
    h, w = x.shape[-2:]
    dy, dx = d.shift
    if dx or dy:
        x = F.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), mode="replicate")
        x = x[..., max(-dy, 0): max(-dy, 0) + h, max(-dx, 0): max(-dx, 0) + w]
    s = min(1.0, d.scale / max(view_scale, 1e-6))  # a view already smaller than the photo loses less
    if s < 0.98:
        small = (max(8, round(h * s)), max(8, round(w * s)))
        x = F.interpolate(x, size=small, mode="bilinear", antialias=True, align_corners=False)
        x = jpeg(gaussian_blur(x, d.sigma), d.quality)
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return jpeg(gaussian_blur(x, d.sigma), d.quality)
