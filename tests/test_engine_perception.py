"""What eyes forgive, as exact invariants: the JND and chroma bounds hold at every written pixel in both
modes, the warp lives only inside the face and within its pixel bound, nothing steps at a view's
edge, and every decision is measured at the photo's own resolution."""

from __future__ import annotations

import math

import pytest
import torch

from ghostmesh_daemon.engine.eot import gaussian_blur, gaussian_blur_channels
from ghostmesh_daemon.engine.perception import (DETAIL_SIGMAS, PerceptualBounds, detail_layers, jnd_map, jnd_terms,
                                                rgb_to_ycc, shape_for, uniform_bounds, ycc_to_rgb)
from ghostmesh_daemon.engine.scene import Face, ViewGeometry
from ghostmesh_daemon.engine.synthesis import (Bounds, Perturbation, clean_view, feather_window, to_view_normalized,
                                               view_coordinates)

H, W = 120, 160
#: A synthetic face whose 150 px chip covers (40, 20)-(120, 100): 80 px wide, centred at (80, 60).
FACE = Face(box=(45.0, 25.0, 115.0, 95.0), landmarks=torch.zeros(5, 2),
            chip_to_image=torch.tensor([[80 / 149, 0.0, 40.0], [0.0, 80 / 149, 20.0]]))
FACE_VIEW = ViewGeometry(box=(34, 14, 126, 106), size=(92, 92))


@pytest.fixture
def photo() -> torch.Tensor:
    """Mid-range pixels with texture on the left half and smooth on the right, so nothing clips."""
    g = torch.Generator().manual_seed(0)
    x = 0.45 + 0.02 * torch.rand(1, 3, H, W, generator=g)
    stripes = (torch.arange(W // 2) // 2 % 2).float()  # fine vertical stripes: hair-like texture
    x[..., : W // 2] += 0.4 * stripes
    return x


def _perturbation(x: torch.Tensor, mode: str, shape: PerceptualBounds) -> Perturbation:
    whole = ViewGeometry(box=(0, 0, W, H), size=(60, 80))
    return Perturbation((H, W), whole, [FACE_VIEW], Bounds(noise_limit=0.05, flow_limit=shape.flow_fraction, mode=mode),
                        shape, flow_grid=8, whole_noise=shape.noise_everywhere)


def _push(p: Perturbation, value: float, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in p.noise:
            t.copy_(torch.randn(t.shape, generator=g).sign() * value)


def test_jnd_follows_luminance_and_texture():
    flat = torch.full((1, 3, 32, 32), 0.5)
    assert float(jnd_map(flat).mean()) * 255 == pytest.approx(3.0, abs=0.05)  # mid-grey, smooth: 3 levels
    dark = torch.full((1, 3, 32, 32), 0.1)
    assert float(jnd_map(dark).mean()) * 255 > 10  # dark backgrounds hide more
    edge = flat.clone()
    edge[..., 16:] = 0.8
    j = jnd_map(edge)[0, 0] * 255
    assert float(j[5, 15]) > 2 * float(j[5, 2])  # beside the edge (column 16) far more than on flat grey
    # row bands give the same map as one pass
    torch.manual_seed(3)
    x = torch.rand(1, 3, 50, 40)
    assert torch.allclose(jnd_map(x, band=16), jnd_map(x, band=1024), atol=1e-7)


def test_colour_transform_round_trips():
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(ycc_to_rgb(rgb_to_ycc(x)), x, atol=1e-6)


@pytest.mark.parametrize("mode", ["tanh", "pgd"])
def test_jnd_and_chroma_bounds_hold_exactly_at_every_pixel(mode, photo):
    shape = shape_for(photo, [FACE], noise_limit=0.05, jnd_scale=1.0, chroma_ratio=0.25, flow_fraction=0.01,
                      noise_everywhere=False)
    p = _perturbation(photo, mode, shape)
    _push(p, 50.0 if mode == "tanh" else 3.0)  # far past every bound
    if mode == "pgd":
        p.project([torch.zeros(1)] * 2)
    with torch.no_grad():
        p.flow.zero_()  # the noise alone: out - x is exactly the noise
    out, _ = p.render_full(photo, band=50)
    ycc = rgb_to_ycc(out - photo)
    coords = view_coordinates(ViewGeometry(box=(0, 0, W, H), size=(H, W)), (H, W))
    bound = shape.channel_bounds(shape.jnd) * shape.noise_mask_at(coords)
    # 1e-5 (a 400th of an 8-bit level): grid_sample's float arithmetic at the identity, not the noise
    assert torch.all(ycc.abs() <= bound + 1e-5)
    assert torch.all(ycc[:, 1:].abs() <= 0.25 * shape.jnd[:, :1] + 1e-5)  # chroma a quarter of luma's at most
    # and colour does not grow with texture: never more than a quarter of the flat-region JND
    flat_jnd = jnd_terms(photo)[:, 1:2]
    assert torch.all(ycc[:, 1:].abs() <= 0.25 * flat_jnd + 1e-5)
    # the bound is used (not met trivially) where the face is, and nothing changes away from it
    used = ycc[:, 0].abs() / bound[:, 0].clamp_min(1e-9)
    assert float(used[0, 60, 70:90].min()) > 0.99
    assert float((out - photo)[..., :, :20].abs().max()) < 1e-5
    # texture masking: the textured half of the face may change more than the smooth half
    assert float(ycc[0, 0, 45:75, 55:75].abs().mean()) > 1.3 * float(ycc[0, 0, 45:75, 85:105].abs().mean())


def test_warp_is_zero_outside_the_face_and_within_its_pixel_bound(photo):
    shape = uniform_bounds((H, W), [FACE], flow_fraction=0.02, noise_everywhere=False)
    p = _perturbation(photo, "tanh", shape)
    with torch.no_grad():
        p.flow.copy_(torch.randn(p.flow.shape, generator=torch.Generator().manual_seed(2)).sign() * 50)
    coords = view_coordinates(ViewGeometry(box=(0, 0, W, H), size=(H, W)), (H, W))
    with torch.no_grad():
        flow = p.flow_at(coords, shape.flow_limit_at(coords))
    px = torch.stack([flow[..., 0] * W / 2, flow[..., 1] * H / 2], dim=-1).abs()
    limit = 0.02 * 80 * (149 / 149)  # 2 % of the 80 px chip
    assert float(px.max()) <= limit + 1e-5
    assert float(px.max()) > 0.95 * limit  # used up to its bound when pushed
    radius = shape.faces[0].radius(shape._pixels(coords))[0]
    outside = radius >= shape.flow_disc[1]
    assert float(px[0][outside].max()) == 0.0  # exactly zero outside the inner face
    _, applied = p.render_full(photo, band=40)
    assert applied["max_flow_px"] <= limit + 1e-5


#: The same face with eyes: corners 10 px apart, centred at (64, 50) and (96, 50) (dlib's order:
#: image-right eye first).
FACE_WITH_EYES = Face(box=FACE.box, landmarks=torch.tensor([[101.0, 50.0], [91.0, 50.0], [59.0, 50.0], [69.0, 50.0], [80.0, 75.0]]),
                      chip_to_image=FACE.chip_to_image)


@pytest.mark.parametrize("mode", ["tanh", "pgd"])
@pytest.mark.parametrize("basis", ["free", "detail"])
def test_eye_guard_leaves_the_eyes_as_they_are(mode, basis, photo):
    """Lowered whites and catch-lights and lids moved by the warp made a face look older and tired:
    under the guard neither the noise (either basis, grain included) nor the warp reaches the eyes,
    while the rest of the face keeps its bounds."""
    detail = dict(detail_bands=4, detail_gain=0.8, detail_boost=0.3, detail_pixels=1.0) if basis == "detail" else {}
    shapes = [shape_for(photo, [FACE_WITH_EYES], noise_limit=0.05, jnd_scale=1.0, chroma_ratio=0.25, flow_fraction=0.03,
                        noise_everywhere=False, eye_guard=guard, **detail) for guard in (0.0, 1.0)]
    outs = []
    for shape in shapes:
        p = _perturbation(photo, mode, shape)
        _push(p, 50.0 if mode == "tanh" else 3.0)
        if mode == "pgd":
            p.project([torch.zeros(1)] * 2)
        with torch.no_grad():
            p.flow.copy_(torch.randn(p.flow.shape, generator=torch.Generator().manual_seed(2)).sign() * 50)
        outs.append(p.render_full(photo, band=50)[0] - photo)
    free, guarded = outs
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    near = lambda r: ((xs - 64) ** 2 + (ys - 50) ** 2 < r * r) | ((xs - 96) ** 2 + (ys - 50) ** 2 < r * r)  # noqa: E731
    assert shapes[1].faces[0].eyes[0][2] == pytest.approx(10 * 149 / 80)  # 10 image px, in chip pixels
    inner, outer = (10 * r for r in shapes[1].eye_disc)
    assert float(free.abs().amax(1)[0][near(inner)].mean()) > 0.005  # unguarded, the eyes change
    assert float(guarded.abs().amax(1)[0][near(inner - 1)].max()) < 1e-5  # guarded, not at all
    mouth = (slice(None), slice(None), slice(70, 85), slice(65, 95))
    assert torch.allclose(guarded[mouth], free[mouth], atol=1e-5)  # beyond the guard, as it was
    coords = view_coordinates(ViewGeometry(box=(0, 0, W, H), size=(H, W)), (H, W))
    assert torch.all(shapes[1].flow_limit_at(coords)[0, 0] <= shapes[0].flow_limit_at(coords)[0, 0])
    assert float(shapes[1].flow_limit_at(coords)[0, 0][near(inner)].max()) == 0.0


def test_no_step_in_perturbation_energy_at_a_view_edge(photo):
    """A synthetic photo with a face view whose edge crosses flat grey: the noise fades to zero
    before the view ends, column by column, with no jump (a hard edge shows as a rectangle)."""
    flat = torch.full_like(photo, 0.5)
    shape = shape_for(flat, [FACE], noise_limit=0.05, jnd_scale=1.0, chroma_ratio=0.25, flow_fraction=0.0,
                      noise_everywhere=False)
    p = _perturbation(flat, "tanh", shape)
    _push(p, 50.0)
    out, _ = p.render_full(flat, band=64)
    energy = (out - flat).abs().sum(1)[0, 40:80]  # rows through the face's middle
    per_column = energy.mean(0)
    x0, x1 = FACE_VIEW.box[0], FACE_VIEW.box[2]
    assert float(per_column[: x0 + 1].max()) < 1e-5 and float(per_column[x1 - 1:].max()) < 1e-5
    jumps = (per_column[1:] - per_column[:-1]).abs()
    assert float(jumps.max()) <= 0.3 * float(per_column.max()), (float(jumps.max()), float(per_column.max()))


def test_decisions_and_report_use_the_native_measure(lpips_model, face_target):
    """``evaluate`` (what accepts, rejects and reports) measures each face on its native crop and the
    whole photo in native tiles, whatever size the optimizer's views had."""
    import numpy as np
    from PIL import Image

    from conftest import shared_data
    from ghostmesh_daemon.engine import evaluate, settings_for
    from ghostmesh_daemon.engine.geometry import bounding_box, downscale
    from ghostmesh_daemon.engine.losses import ReferenceLPIPS, tiled_lpips
    from ghostmesh_daemon.faces import detect_faces

    rgb = np.asarray(Image.open(shared_data("faces", "biden", "biden.jpg")).convert("RGB")).copy()
    faces = detect_faces(rgb)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    g = torch.Generator().manual_seed(0)
    y = (x + (torch.rand(x.shape, generator=g) - 0.5) * (6 / 255)).clamp(0, 1)  # fine texture, seen at 100 %
    s = settings_for("stealth", face_view_size=128, face_lpips_size=64)  # a coarse optimizer proxy
    ev = evaluate(x, y, faces, [face_target], lpips_model, s)
    assert ev.lpips_resolution == tuple(x.shape[-2:])
    x0, y0, x1, y1 = bounding_box(faces[0].chip_corners(), *x.shape[-2:])
    native = float(ReferenceLPIPS(lpips_model, x[..., y0:y1, x0:x1])(y[..., y0:y1, x0:x1]))
    assert ev.face_lpips[0] == pytest.approx(native, rel=1e-4)
    small = float(ReferenceLPIPS(lpips_model, downscale(x[..., y0:y1, x0:x1], (64, 64)))(downscale(y[..., y0:y1, x0:x1], (64, 64))))
    assert native > 3 * small  # the downscaled proxy hides the texture; decisions do not use it
    assert ev.lpips == pytest.approx(tiled_lpips(lpips_model, x, y), rel=1e-6)
    assert "native" in ev.method["face_lpips"] and "tiles" in ev.method["lpips"]


@pytest.fixture
def half_flat(photo) -> torch.Tensor:
    """The striped left half of ``photo`` beside an exactly flat right half: smooth skin with no detail."""
    x = photo.clone()
    x[..., W // 2:] = 0.5
    return x


def _detail_shape(x: torch.Tensor, gain: float = 0.5, boost: float = 0.5, pixels: float = 0.0,
                  **kw) -> PerceptualBounds:
    args = dict(noise_limit=0.05, jnd_scale=1.0, chroma_ratio=0.25, flow_fraction=0.0, noise_everywhere=False) | kw
    return shape_for(x, [FACE], detail_bands=4, detail_gain=gain, detail_boost=boost, detail_pixels=pixels, **args)


def test_detail_layers_add_up_to_the_luma(photo):
    layers = detail_layers(photo)
    luma = rgb_to_ycc(photo)[:, :1]
    assert layers.shape == (1, len(DETAIL_SIGMAS), H, W)
    assert torch.allclose(layers.sum(1, keepdim=True) + gaussian_blur(luma, DETAIL_SIGMAS[-1]), luma, atol=1e-6)


def test_detail_scale_moves_every_band_and_the_layers_still_add_up(photo):
    shape = _detail_shape(photo, detail_scale=2.0)
    assert shape.detail_sigmas == tuple(2 * s for s in DETAIL_SIGMAS)
    luma = rgb_to_ycc(photo)[:, :1]
    assert torch.allclose(shape.detail.sum(1, keepdim=True) + gaussian_blur(luma, shape.detail_sigmas[-1]), luma, atol=1e-6)
    assert not torch.allclose(shape.detail, _detail_shape(photo).detail, atol=1e-3)  # really other bands
    with pytest.raises(ValueError, match="detail_scale"):
        _detail_shape(photo, detail_scale=0.0)


@pytest.mark.parametrize("mode", ["tanh", "pgd"])
def test_detail_basis_keeps_the_luma_bound_and_draws_nothing_on_flat_skin(mode, half_flat):
    """Re-weighting the photo's own detail cannot put texture where there is none (the bands and
    mottling free noise drew on smooth skin), leaves colour alone, and never passes the JND bound."""
    shape = _detail_shape(half_flat)
    p = _perturbation(half_flat, mode, shape)
    assert p.shape.noise_channels == 4 and p.noise[1].shape[1] == 4
    out, _ = p.render_full(half_flat, band=50)
    assert float((out - half_flat).abs().max()) < 1e-5  # zero gains: the original (up to grid_sample)
    with torch.no_grad():  # every band's contrast down by the most allowed (the gains are low-passed)
        p.noise[1].fill_(-50.0 if mode == "tanh" else -3.0)
    if mode == "pgd":
        p.project([torch.zeros(1)] * 2)
    out, _ = p.render_full(half_flat, band=50)
    ycc = rgb_to_ycc(out - half_flat)
    coords = view_coordinates(ViewGeometry(box=(0, 0, W, H), size=(H, W)), (H, W))
    bound = shape.channel_bounds(shape.jnd) * shape.noise_mask_at(coords)
    assert torch.all(ycc[:, :1].abs() <= bound[:, :1] + 1e-5)
    assert float(ycc[:, 1:].abs().max()) < 1e-5  # chroma untouched
    # inside the face, more than the coarsest band's reach (2.5 sigma) plus the gains' from the stripes
    assert float(ycc[0, 0, 40:80, 105:118].abs().max()) < 1e-5
    assert float(ycc[0, 0, 40:80, 50:75].abs().mean()) > 0.01  # while the striped half changes


def test_detail_basis_decreases_and_increases_detail_by_their_own_limits(photo):
    # a bound far above the change (JND x 100, cap 1) so the outer tanh is nearly the identity
    shape = _detail_shape(photo, gain=0.5, boost=0.1, noise_limit=1.0, jnd_scale=100.0)
    p = _perturbation(photo, "tanh", shape)
    changes = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            p.noise[1].fill_(sign * 50.0)
        out, _ = p.render_full(photo, band=50)
        changes.append(rgb_to_ycc(out - photo)[0, 0, 50:70, 70:90])
    raised, lowered = changes
    detail = detail_layers(photo).sum(1)[0, 50:70, 70:90]
    window = feather_window(to_view_normalized(
        view_coordinates(ViewGeometry(box=(0, 0, W, H), size=(H, W)), (H, W)), FACE_VIEW, (H, W)), Bounds().feather)
    assert float(window[0, 0, 50:70, 70:90].min()) == 1.0  # the middle of the face view: gains fully on
    assert torch.allclose(raised, 0.1 * detail, atol=2e-3)  # x1.1 at most
    assert torch.allclose(lowered, -0.5 * detail, atol=5e-3)  # x0.5 at least
    assert float(detail.abs().max()) > 0.05  # and there is detail to change


def test_detail_basis_grain_lives_only_where_texture_masks_it(half_flat):
    shape = _detail_shape(half_flat, gain=0.01, boost=0.01, pixels=0.5)
    p = _perturbation(half_flat, "tanh", shape)
    assert p.shape.noise_channels == 1 + 4 and p.noise[1].shape[1] == 1 + 4
    _push(p, 50.0)
    out, _ = p.render_full(half_flat, band=50)
    ycc = rgb_to_ycc(out - half_flat)
    coords = view_coordinates(ViewGeometry(box=(0, 0, W, H), size=(H, W)), (H, W))
    bound = shape.channel_bounds(shape.jnd) * shape.noise_mask_at(coords)
    assert bound.shape[1] == 4  # Y, Cb, Cr and the grain's bound
    assert torch.all(ycc[:, :1].abs() <= bound[:, :1] + 1e-5)
    assert float(ycc[:, 1:].abs().max()) < 1e-5
    assert float(ycc[0, 0, 40:80, 105:118].abs().max()) < 1e-5  # none on flat skin
    # in the stripes the grain (not the 1 % gains) moves pixels, up to half the texture term
    grain = ycc[0, 0, 50:70, 50:75].abs()
    assert float(grain.mean()) > 0.2 * float(bound[0, 3, 50:70, 50:75].mean())
    assert torch.all(grain <= 0.5 * bound[0, 3, 50:70, 50:75] + 0.01 * detail_layers(half_flat).abs().sum(1)[0, 50:70, 50:75] + 1e-5)


def test_detail_basis_view_matches_the_full_render(photo):
    """The gains' low-pass runs per view while optimizing and over row bands when written: the two agree."""
    shape = _detail_shape(photo)
    p = _perturbation(photo, "tanh", shape)
    with torch.no_grad():
        p.noise[1].normal_(0, 1, generator=torch.Generator().manual_seed(4))
    out, _ = p.render_full(photo, band=32)
    with torch.no_grad():
        view = p.render_views([clean_view(photo, v) for v in p.views])[1].clamp(0, 1)
    x0, y0, x1, y1 = FACE_VIEW.box
    assert torch.allclose(view[..., 10:-10, 10:-10], out[..., y0 + 10:y1 - 10, x0 + 10:x1 - 10], atol=2e-5)


def test_per_channel_fft_blur_is_a_gaussian_with_replicated_edges():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(1, 2, 40, 50, generator=g)
    sigmas = (1.5, 6.0)
    out = gaussian_blur_channels(x, sigmas)
    for c, sigma in enumerate(sigmas):  # against a direct convolution 6 sigma wide
        r = math.ceil(6 * sigma)
        k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64) ** 2 / (2 * sigma**2))
        k = (k / k.sum()).float()
        ref = torch.nn.functional.pad(x[:, c:c + 1], (r, r, r, r), mode="replicate")
        ref = torch.nn.functional.conv2d(ref, k.reshape(1, 1, 1, -1))
        ref = torch.nn.functional.conv2d(ref, k.reshape(1, 1, -1, 1))
        assert torch.allclose(out[:, c:c + 1], ref, atol=1e-4)
    flat = torch.full((1, 1, 30, 30), 0.7)
    assert torch.allclose(gaussian_blur_channels(flat, (8.0,)), flat, atol=1e-5)
