"""The perturbation: bounded noise plus a smooth bounded warp, rendered per view or at full size.

Parameters (raw, unbounded in tanh mode):

- ``flow``: (1, 2, gh, gw), a coarse control grid. The displacement at a pixel p is
  ``L(p) * tanh(bicubic(flow)(p))`` image pixels per axis, where ``L`` is the warp's limit there
  (:meth:`PerceptualBounds.flow_limit_at`: a fraction of the face's size inside the inner face,
  exactly 0 outside it). tanh is applied *after* the bicubic upsampling, so bicubic overshoot
  cannot break the bound.
- ``noise[0]``: (1, 3, h, w), noise over the whole photo at the work resolution (image targets only).
- ``noise[i]``, i >= 1: (1, 3, h_i, w_i), noise over face view i at face detail, faded to zero at
  the view's edges by a smooth window.

The three noise channels are luma and the two chromas (JPEG's Y, Cb, Cr). With
``b = tanh(up(noise[0]) + sum_i window_i * up(noise[i]))`` (tanh mode; in PGD mode the same sum
without tanh, projected into [-1, 1] after each step and clamped to it at the final render), the
noise is ``ycc_to_rgb(B(p) * b)`` where ``B`` holds, per pixel, the luma JND and the tighter chroma
bound, times the feathered face mask (:class:`PerceptualBounds`). So every bound holds exactly at
every pixel, in both modes, and the noise fades smoothly to zero at every mask and view edge. The
protected pixel is ``(x + delta)(p + flow(p))`` (grid_sample, border padding), never clamped inside
the forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .eot import gaussian_blur, gaussian_blur_channels
from .geometry import check_image, downscale
from .perception import PerceptualBounds, ycc_to_rgb
from .scene import ViewGeometry


#: Chou & Li's luma JND on smooth mid-tone skin (3 of 255 levels): the unit blotchiness is counted in.
JND_MIDTONE = 3 / 255


@dataclass(frozen=True)
class Bounds:
    """The limits the perturbation must respect, and how it is parametrised."""

    noise_limit: float = 0.05  # cap of the per-pixel luma bound (the JND map is clamped to it)
    flow_limit: float = 0.01  # largest warp, as a fraction of each face's chip side
    mode: str = "tanh"  # or "pgd"
    feather: float = 0.25  # fraction of a face view's half-size over which its noise fades out
    grain: float = 0.0  # sigma (photo pixels) of the high-pass that keeps the noise grain-like; 0 = off
    detail_smooth: float = 1.5  # low-pass on each detail band's gains, in multiples of that band's own sigma

    def __post_init__(self) -> None:
        if self.mode not in ("tanh", "pgd"):
            raise ValueError(f"mode must be 'tanh' or 'pgd', got {self.mode!r}")
        if not (0 < self.noise_limit <= 1 and 0 <= self.flow_limit < 0.5):
            raise ValueError(f"limits out of range: noise {self.noise_limit}, flow {self.flow_limit}")


def view_coordinates(geometry: ViewGeometry, image_hw: tuple[int, int], device=None, rows: tuple[int, int] | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """Image-normalised (x, y) coordinates of every pixel centre of a view, shape (1, h, w, 2).

    ``rows`` restricts to a band of the view's rows (used by the banded full-size render).
    """
    x0, y0, x1, y1 = geometry.box
    h, w = geometry.size
    H, W = image_hw
    r0, r1 = rows or (0, h)
    # view pixel centre v -> image pixel edge coordinate e = x0 + (v + 0.5) / s ; normalised = 2e/W - 1
    xs = x0 + (torch.arange(w, device=device, dtype=dtype) + 0.5) * ((x1 - x0) / w)
    ys = y0 + (torch.arange(r0, r1, device=device, dtype=dtype) + 0.5) * ((y1 - y0) / h)
    gx = 2 * xs / W - 1
    gy = 2 * ys / H - 1
    return torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]


def to_view_normalized(coords: Tensor, geometry: ViewGeometry, image_hw: tuple[int, int]) -> Tensor:
    """Image-normalised coordinates (..., 2) to the view's own normalised coordinates."""
    x0, y0, x1, y1 = geometry.box
    H, W = image_hw
    ex = (coords[..., 0] + 1) * (W / 2)
    ey = (coords[..., 1] + 1) * (H / 2)
    return torch.stack([2 * (ex - x0) / (x1 - x0) - 1, 2 * (ey - y0) / (y1 - y0) - 1], dim=-1)


def feather_window(coords_view: Tensor, feather: float) -> Tensor:
    """Smooth window (1, 1, h, w): 1 inside the view, easing to 0 at its edges (smoothstep)."""
    t = ((1 - coords_view.abs()) / feather).clamp(0, 1)  # constants only: no parameter is clamped
    s = t * t * (3 - 2 * t)
    return (s[..., 0] * s[..., 1])[:, None]


class Perturbation(nn.Module):
    """Holds the raw parameters and renders candidates; knows nothing of files or models."""

    def __init__(
        self,
        image_hw: tuple[int, int],
        whole: ViewGeometry,
        face_views: list[ViewGeometry],
        bounds: Bounds,
        shape: PerceptualBounds,
        flow_grid: int = 32,
        whole_noise: bool = True,
    ) -> None:
        super().__init__()
        H, W = image_hw
        if tuple(shape.image_hw) != (H, W):
            raise ValueError(f"perceptual bounds are for {shape.image_hw}, the photo is {(H, W)}")
        self.image_hw = image_hw
        self.bounds = bounds
        self.shape = shape
        gh, gw = (flow_grid, max(2, round(flow_grid * W / H))) if H >= W else (max(2, round(flow_grid * H / W)), flow_grid)
        self.flow = nn.Parameter(torch.zeros(1, 2, gh, gw))
        self.views = [whole, *face_views]
        # Without an image-level target nothing asks for noise outside the faces: the whole-photo
        # noise is then left out (an empty parameter) rather than optimized towards zero.
        self.noise = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, shape.noise_channels, *v.size) if (i > 0 or whole_noise) else torch.zeros(0)) for i, v in enumerate(self.views)]
        )
        self._plans: dict[tuple, _ViewPlan] = {}

    # --- fields at arbitrary pixels -----------------------------------------------------------

    def flow_field(self) -> Tensor:
        """The control grid upsampled bicubically to an intermediate grid, (1, 2, 8*gh, 8*gw).

        Views then read it bilinearly: as smooth as bicubic everywhere at photo scale, and much
        cheaper than bicubic ``grid_sample`` (whose backward pass dominated a step).
        """
        gh, gw = self.flow.shape[-2:]
        return F.interpolate(self.flow, size=(8 * gh, 8 * gw), mode="bicubic", align_corners=True)

    def flow_at(self, coords: Tensor, limit_px: Tensor, field: Tensor | None = None) -> Tensor:
        """Displacement in image-normalised units at ``coords`` (1, h, w, 2) -> (1, h, w, 2).

        ``limit_px`` (1, 1, h, w) is the warp's limit at those points, in image pixels.
        """
        field = self.flow_field() if field is None else field
        raw = F.grid_sample(field, coords, mode="bilinear", padding_mode="border", align_corners=True)
        H, W = self.image_hw
        to_norm = torch.tensor([2.0 / W, 2.0 / H], device=coords.device, dtype=coords.dtype).reshape(1, 2, 1, 1)
        return (limit_px * to_norm * torch.tanh(raw)).permute(0, 2, 3, 1)

    def raw_noise_at(self, coords: Tensor, skip: int | None = None) -> Tensor:
        """Sum of every view's noise parameter at ``coords`` (image-normalised), (1, 3, h, w).

        View ``skip`` is left out (the caller adds it at its native resolution).
        """
        total = None
        for i, (geometry, theta) in enumerate(zip(self.views, self.noise)):
            if i == skip or theta.numel() == 0:
                continue
            local = to_view_normalized(coords, geometry, self.image_hw)
            inside = (local.abs() <= 1).all(dim=-1)
            if not bool(inside.any()):
                continue
            term = F.grid_sample(theta, local, mode="bilinear", padding_mode="border", align_corners=False)
            if i > 0:
                term = term * feather_window(local, self.bounds.feather)
            total = term if total is None else total + term
        if total is None:
            total = coords.new_zeros(1, self.shape.noise_channels, *coords.shape[1:3])
        return total

    def bounded(self, raw: Tensor, view_scale: float = 1.0) -> Tensor:
        """The raw sum as a fraction of the per-pixel bound, in [-1, 1] (tanh) or unclamped (PGD).

        With ``bounds.grain`` (pixels of the photo) the raw field first loses everything coarser than
        that (raw minus its Gaussian blur): what is left reads as fine film grain, never as the
        blotches and streaks a coherent pattern of the same amplitude makes on smooth skin.
        """
        if self.bounds.grain > 0 and raw.ndim == 4:
            raw = raw - gaussian_blur(raw, self.bounds.grain * view_scale)
        if self.bounds.mode == "tanh":
            return torch.tanh(raw)
        return raw

    def noise_bound_at(self, coords: Tensor, jnd: Tensor) -> Tensor:
        """(1, 3, h, w) per-pixel bounds of (Y, Cb, Cr) at ``coords``, given the JND sampled there (and the
        detail basis's grain bound as a fourth channel when it has one)."""
        return self.shape.channel_bounds(jnd) * self.shape.noise_mask_at(coords)

    # --- rendering ------------------------------------------------------------------------------

    def forward(self, clean_views: list[Tensor]) -> list[Tensor]:
        return self.render_views(clean_views)

    def render_views(self, clean_views: list[Tensor]) -> list[Tensor]:
        """Every view of the candidate, given the clean views (the flow field is built once)."""
        field = self.flow_field()
        return [self.render_view(i, c, field) for i, c in enumerate(clean_views)]

    def _plan(self, index: int, device: torch.device, dtype: torch.dtype) -> "_ViewPlan":
        """Everything about view ``index`` that does not change between steps, computed once."""
        key = (index, device, dtype)
        if key not in self._plans:
            geometry = self.views[index]
            coords = view_coordinates(geometry, self.image_hw, device, dtype=dtype)
            local = to_view_normalized(coords, geometry, self.image_hw)
            others = []
            for j, (g, theta) in enumerate(zip(self.views, self.noise)):
                if j == index or theta.numel() == 0:
                    continue
                there = to_view_normalized(coords, g, self.image_hw)
                if bool((there.abs() <= 1).all(dim=-1).any()):
                    others.append((j, there, feather_window(there, self.bounds.feather) if j > 0 else None))
            x0, y0, x1, y1 = geometry.box
            H, W = self.image_hw
            scale = torch.tensor([W / (x1 - x0), H / (y1 - y0)], device=device, dtype=dtype)
            window = feather_window(local, self.bounds.feather) if index > 0 else None
            jnd = clean_view(self.shape.jnd.to(device=device, dtype=dtype), geometry)
            bound = self.noise_bound_at(coords, jnd)
            flow_px = self.shape.flow_limit_at(coords)
            detail = None if self.shape.detail is None else clean_view(self.shape.detail.to(device=device, dtype=dtype), geometry)
            self._plans[key] = _ViewPlan(coords, local, scale, window, others, bound, flow_px, detail)
        return self._plans[key]

    def render_view(self, index: int, clean: Tensor, field: Tensor | None = None) -> Tensor:
        """The candidate as view ``index`` sees it; ``clean`` is the clean view, (1, 3, h, w)."""
        check_image(clean, "clean view")
        plan = self._plan(index, clean.device, clean.dtype)
        ycc = self._noise_ycc(index, plan)
        delta = ycc_to_rgb(ycc) if ycc is not None else clean.new_zeros(())
        if self.shape.flow_fraction == 0:  # no warp: sampling the view at its own pixel centres is the identity
            return clean + delta
        # the view's own normalised coordinates are an affine function of the photo's: shift by the flow
        grid = plan.local + self.flow_at(plan.coords, plan.flow_px, field) * plan.scale
        return F.grid_sample(clean + delta, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _noise_ycc(self, index: int, plan: "_ViewPlan") -> Tensor | None:
        """The noise as view ``index`` sees it, (1, 3, h, w) luma/chroma changes; None if it has none."""
        raw = plan.coords.new_zeros(())
        for j, there, window in plan.others:
            term = F.grid_sample(self.noise[j], there, mode="bilinear", padding_mode="border", align_corners=False)
            raw = raw + (term if window is None else term * window)
        if self.noise[index].numel():
            raw = raw + (self.noise[index] if plan.window is None else self.noise[index] * plan.window)
        return self.to_ycc(raw, plan.bound, plan.detail, self.views[index].scale[1]) if raw.ndim else None

    def to_ycc(self, raw: Tensor, bound: Tensor, detail: Tensor | None, view_scale: float = 1.0,
               written: bool = False) -> Tensor:
        """The raw parameters' sum at some pixels -> (1, 3, h, w) luma/chroma changes within ``bound``.

        Free pixels: ``bound * tanh(raw)``. Detail basis: each raw channel, low-passed so that it
        varies slowly, becomes the gain of one band of the original's own luma detail, and the luma
        change is ``B * tanh(sum_k g_k t_k D_k / B)`` (``B``: the luma bound). The cloak can then only
        make existing detail locally stronger or weaker, the way a retouch's clarity or smoothing
        does; it cannot draw texture where the photo has none (the bands and mottling of free noise
        on smooth skin). With ``detail_pixels`` a luma grain is added inside the outer tanh, bounded by
        a share of the JND's texture term alone (hair, brows, lashes, edges; nothing on smooth skin).
        The outer tanh keeps the per-pixel JND bound exact; chroma is left alone.

        ``written``: the render that is written. In PGD mode each fraction of its bound is then clamped
        into [-1, 1] *after* the grain high-pass and the gains' low-pass (filtering a projected field
        can leave [-1, 1]); the optimizer's views are never clamped (a clamp kills the gradient).
        """
        def fraction(r: Tensor) -> Tensor:
            f = self.bounded(r, view_scale)
            return f.clamp(-1, 1) if written and self.bounds.mode == "pgd" else f

        if detail is None:
            return bound * fraction(raw)
        share = self.shape.detail_pixels
        free = None
        if share > 0:  # luma grain on top, where the photo's own texture masks it
            free, raw = share * bound[:, 3:4] * fraction(raw[:, :1]), raw[:, 1:]
        if self.bounds.detail_smooth > 0:  # a gain varying faster than its band would draw new texture
            raw = gaussian_blur_channels(raw, [self.bounds.detail_smooth * s * view_scale for s in self.shape.detail_sigmas])
        t = torch.tanh(raw) if self.bounds.mode == "tanh" else raw
        if written and self.bounds.mode == "pgd":
            t = t.clamp(-1, 1)
        scaled = torch.where(t < 0, self.shape.detail_gain * t, self.shape.detail_boost * t)
        u = (scaled * detail).sum(1, keepdim=True)
        luma = bound[:, :1]
        y = luma * torch.tanh((u if free is None else u + free) / (luma + 1e-6))
        return torch.cat([y, torch.zeros_like(y), torch.zeros_like(y)], dim=1)

    def blotchiness(self, clean_views: list[Tensor], sigma: float) -> Tensor:
        """Mean square of the noise's coarse part (Gaussian blur of ``sigma`` photo pixels) over the
        face views, in units of a mid-tone JND (3/255).

        Why: the per-pixel bound caps each pixel, not what neighbours do together, and an optimizer
        left free under it saturates the bound in same-signed patches: the mottled, aged skin and
        the bands people saw on panic copies. Patches a few pixels across are where the eye's
        contrast sensitivity peaks at 100 %; a grain-like pattern of the same amplitude averages
        out under this blur and costs almost nothing.
        """
        total, area = None, 0.0
        for i in range(1, len(self.views)):
            plan = self._plan(i, clean_views[i].device, clean_views[i].dtype)
            ycc = self._noise_ycc(i, plan)
            if ycc is None:
                continue
            inside = (plan.bound[:, :1] > 0).to(ycc.dtype)
            coarse = gaussian_blur(ycc, sigma * self.views[i].scale[1]) / JND_MIDTONE
            term = (coarse.pow(2) * inside).sum()
            total = term if total is None else total + term
            area += float(inside.sum()) * ycc.shape[1]
        if total is None:
            return self.flow.new_zeros(())
        return total / max(area, 1.0)

    @torch.no_grad()
    def render_full(self, x: Tensor, band: int = 512) -> tuple[Tensor, dict[str, float]]:
        """The protected photo at full resolution, in row bands to bound memory.

        Returns the image clamped to [0, 1] (and, in PGD mode, the noise clamped to its bound) and
        the largest noise and flow actually applied.
        """
        check_image(x)
        H, W = self.image_hw
        full = ViewGeometry(box=(0, 0, W, H), size=(H, W))
        out = torch.empty_like(x)
        max_flow_px = max((f.side_px * self.shape.flow_fraction for f in self.shape.faces), default=0.0)
        smooth = self.bounds.detail_smooth * self.shape.detail_sigmas[-1] if self.shape.detail is not None else 0.0
        pad = math.ceil(max_flow_px) + 2 + math.ceil(3 * self.bounds.grain) + math.ceil(4 * smooth)
        max_delta = 0.0
        max_flow = 0.0
        jnd_full = self.shape.jnd.to(device=x.device, dtype=x.dtype)
        field = self.flow_field()
        for r0 in range(0, H, band):
            r1 = min(H, r0 + band)
            i0, i1 = max(0, r0 - pad), min(H, r1 + pad)
            src_geom = ViewGeometry(box=(0, i0, W, i1), size=(i1 - i0, W))
            src_coords = view_coordinates(src_geom, self.image_hw, x.device, dtype=x.dtype)
            detail = None if self.shape.detail is None else self.shape.detail[..., i0:i1, :].to(x)
            # written=True: in PGD mode the bound is exact in the written photo whatever the projection left
            delta = ycc_to_rgb(self.to_ycc(self.raw_noise_at(src_coords), self.noise_bound_at(src_coords, jnd_full[..., i0:i1, :]),
                                           detail, written=True))
            coords = view_coordinates(full, self.image_hw, x.device, rows=(r0, r1), dtype=x.dtype)
            flow = self.flow_at(coords, self.shape.flow_limit_at(coords), field)
            grid = to_view_normalized(coords + flow, src_geom, self.image_hw)
            band_out = F.grid_sample(x[..., i0:i1, :] + delta, grid, mode="bilinear", padding_mode="border", align_corners=False)
            out[..., r0:r1, :] = band_out.clamp(0, 1)
            max_delta = max(max_delta, float(delta.abs().max()))
            fx = flow[..., 0].abs().max() * (W / 2)
            fy = flow[..., 1].abs().max() * (H / 2)
            max_flow = max(max_flow, float(torch.maximum(fx, fy)))
        return out, {"max_delta": max_delta, "max_flow_px": max_flow}

    # --- regularisers and bounds ----------------------------------------------------------------

    def vertical_flow_energy(self) -> Tensor:
        """Mean squared vertical displacement on the control grid, as a fraction of the limit."""
        return torch.tanh(self.flow[:, 1]).pow(2).mean()

    def flow_roughness(self) -> Tensor:
        """Mean squared difference between neighbouring control points (stAdv's smoothness term, on
        the bounded grid): a warp that bends a line one way and its neighbour the other reads as wavy."""
        f = torch.tanh(self.flow)
        return (f[..., 1:, :] - f[..., :-1, :]).pow(2).mean() + (f[..., :, 1:] - f[..., :, :-1]).pow(2).mean()

    @torch.no_grad()
    def project(self, clean_views: list[Tensor]) -> None:
        """PGD projection after a step: the summed raw noise within [-1, 1] (a fraction of each
        pixel's bound). Face views carry noise on top of the whole-photo noise; their parameter is
        projected so that the *sum* stays within [-1, 1] where the window is non-zero. Pixels pushed
        past [0, 1] are clamped at the final render, which only moves them towards the original.
        """
        if self.bounds.mode != "pgd":
            return
        if self.noise[0].numel():
            self.noise[0].clamp_(-1, 1)
        for i in range(1, len(self.views)):
            geometry = self.views[i]
            coords = view_coordinates(geometry, self.image_hw, self.noise[i].device, dtype=self.noise[i].dtype)
            base = self.raw_noise_at(coords, skip=i)
            w = feather_window(to_view_normalized(coords, geometry, self.image_hw), self.bounds.feather).clamp_min(1e-6)
            self.noise[i].copy_(torch.maximum(torch.minimum(self.noise[i], (1 - base) / w), (-1 - base) / w))


@dataclass
class _ViewPlan:
    coords: Tensor  # (1, h, w, 2) photo-normalised coordinates of the view's pixels
    local: Tensor  # the same in the view's own normalised coordinates
    scale: Tensor  # (2,) photo-normalised -> view-normalised displacement
    window: Tensor | None  # the view's own noise fade-out (face views)
    others: list[tuple[int, Tensor, Tensor | None]]  # other views' noise reaching this one
    bound: Tensor  # (1, 3, h, w) per-pixel bounds of Y, Cb, Cr (JND x chroma ratio x face mask)
    flow_px: Tensor  # (1, 1, h, w) the warp's limit at each pixel, image pixels
    detail: Tensor | None = None  # (1, K, h, w) the original's luma detail bands (detail basis)


def clean_view(x: Tensor, geometry: ViewGeometry) -> Tensor:
    """The clean photo as a view sees it: its box, resized to its size with antialiasing."""
    x0, y0, x1, y1 = geometry.box
    return downscale(x[..., y0:y1, x0:x1], geometry.size)
