"""The perturbation's math: bounds hold exactly, gradients never die, views agree with the full render."""

from __future__ import annotations

import math

import pytest
import torch

from ghostmesh_daemon.engine.perception import uniform_bounds
from ghostmesh_daemon.engine.scene import Face, ViewGeometry
from ghostmesh_daemon.engine.synthesis import Bounds, Perturbation, clean_view, feather_window, view_coordinates

H, W = 96, 128
#: A synthetic face whose 150 px chip covers (30, 20)-(90, 80) of the photo: 60 px, 0.4 px per chip pixel.
FACE = Face(box=(35.0, 25.0, 85.0, 75.0), landmarks=torch.zeros(5, 2),
            chip_to_image=torch.tensor([[60 / 149, 0.0, 30.0], [0.0, 60 / 149, 20.0]]))


def make(mode: str = "tanh", flow_limit: float = 0.03, faces: bool = True, whole_noise: bool = True,
         grain: float = 0.0) -> Perturbation:
    whole = ViewGeometry(box=(0, 0, W, H), size=(48, 64))
    face_views = [ViewGeometry(box=(30, 20, 90, 80), size=(60, 60))] if faces else []
    shape = uniform_bounds((H, W), [FACE] if faces else [], limit=0.05, chroma_ratio=0.5, flow_fraction=flow_limit,
                           noise_everywhere=whole_noise)
    return Perturbation((H, W), whole, face_views, Bounds(noise_limit=0.05, flow_limit=flow_limit, mode=mode, grain=grain),
                        shape, flow_grid=8, whole_noise=whole_noise)


@pytest.fixture
def image() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(1, 3, H, W)


def _push_past_bounds(p: Perturbation, value: float = 50.0) -> None:
    with torch.no_grad():
        for t in p.parameters():
            t.copy_(torch.randn_like(t).sign() * value)


@pytest.mark.parametrize("grain", [0.0, 1.0])  # the grain's high-pass can take a projected field past [-1, 1]
@pytest.mark.parametrize("mode", ["tanh", "pgd"])
def test_bounds_hold_exactly_in_the_full_render(mode, grain, image):
    p = make(mode, grain=grain)
    _push_past_bounds(p)
    if mode == "pgd":
        p.project([clean_view(image, g) for g in p.views])
    out, applied = p.render_full(image, band=40)
    # luma within 0.05 and each chroma within half of it: in RGB at most 0.05 * (1 + 0.5 * 1.772)
    assert applied["max_delta"] <= 0.05 * (1 + 0.5 * 1.7720) + 1e-6
    assert applied["max_flow_px"] <= 0.03 * 60 + 1e-4  # 3 % of the face's 60 px chip
    assert out.min() >= 0 and out.max() <= 1
    # the flow is really used up to (nearly) its limit when pushed: the bound is not trivially met
    assert applied["max_flow_px"] > 0.9 * 0.03 * 60


def test_flow_bound_is_a_fraction_of_the_face_in_pixels(image):
    p = make(flow_limit=0.01)
    _push_past_bounds(p, 100.0)
    coords = view_coordinates(ViewGeometry(box=(0, 0, W, H), size=(H, W)), (H, W))
    with torch.no_grad():
        flow = p.flow_at(coords, p.shape.flow_limit_at(coords))
    assert float(flow[..., 0].abs().max()) * W / 2 <= 0.01 * 60 + 1e-5
    assert float(flow[..., 1].abs().max()) * H / 2 <= 0.01 * 60 + 1e-5


def test_gradients_are_alive_past_the_bound(image):
    """The clamp trap: a clamped parameter past its bound gets exactly zero gradient. Ours never do."""
    p = make("tanh")
    with torch.no_grad():
        for t in p.parameters():
            t.fill_(3.0)  # tanh(3) = 0.995: well into saturation
    views = p.render_views([clean_view(image, g) for g in p.views])
    sum(v.sum() for v in views).backward()
    for name, t in p.named_parameters():
        assert t.grad is not None and t.grad.abs().max() > 0, name


def test_pgd_forward_pass_has_no_clamp(image):
    """In PGD mode the forward pass is linear in the noise: a parameter beyond eps still gets gradient."""
    p = make("pgd", faces=False)
    with torch.no_grad():
        p.noise[0].fill_(0.2)  # 4x the bound, as after an optimizer step before projection
    views = p.render_views([clean_view(image, g) for g in p.views])
    views[0].sum().backward()
    assert torch.all(p.noise[0].grad != 0)


def test_pgd_projection_bounds_the_sum_of_whole_and_face_noise(image):
    p = make("pgd")
    _push_past_bounds(p, 1.0)
    clean = [clean_view(image, g) for g in p.views]
    p.project(clean)
    assert float(p.noise[0].detach().abs().max()) <= 1 + 1e-7  # a fraction of each pixel's bound
    g = p.views[1]
    coords = view_coordinates(g, (H, W))
    from ghostmesh_daemon.engine.synthesis import to_view_normalized

    with torch.no_grad():
        total = p.raw_noise_at(coords, skip=1) + p.noise[1] * feather_window(to_view_normalized(coords, g, (H, W)), p.bounds.feather)
    assert float(total.abs().max()) <= 1 + 1e-6
    assert float(total.abs().max()) > 0.5  # and the bound is really used


def test_full_resolution_face_view_matches_the_full_render(image):
    """What the optimizer sees of a face is what gets written (inside the view, away from its border)."""
    p = make("tanh")
    with torch.no_grad():
        for t in p.parameters():
            t.normal_(0, 1)
    out, _ = p.render_full(image, band=32)
    g = p.views[1]
    with torch.no_grad():
        view = p.render_views([clean_view(image, v) for v in p.views])[1].clamp(0, 1)
    x0, y0, x1, y1 = g.box
    crop = out[..., y0:y1, x0:x1]
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert torch.allclose(view[inner], crop[inner], atol=2e-5)


def test_without_a_warp_views_skip_the_resampling_and_render_the_same(image):
    """flow_limit 0 (stealth) renders a view as clean + noise; sampling it at its own pixel centres gave the same."""
    warped, plain = make("tanh", flow_limit=0.03), make("tanh", flow_limit=0.0)
    torch.manual_seed(1)
    with torch.no_grad():
        for a, b in zip(warped.noise, plain.noise):
            a.normal_(0, 1)
            b.copy_(a)
    clean = [clean_view(image, v) for v in plain.views]
    with torch.no_grad():  # warped's flow parameters are all zero: its grid is each view's identity
        for a, b, c in zip(warped.render_views(clean), plain.render_views(clean), clean):
            assert torch.allclose(a, b, atol=1e-5)
            assert float((b - c).abs().max()) > 0.01  # the noise is there
    out, applied = plain.render_full(image, band=32)
    assert applied["max_flow_px"] == 0


def test_window_fades_to_zero_at_the_edges():
    g = ViewGeometry(box=(0, 0, 40, 40), size=(40, 40))
    coords = view_coordinates(g, (40, 40))
    from ghostmesh_daemon.engine.synthesis import to_view_normalized

    w = feather_window(to_view_normalized(coords, g, (40, 40)), 0.25)
    # the outermost pixel centres lie half a pixel inside the edge: the window is nearly zero there
    assert float(w[..., 0, :].max()) < 0.03 and float(w[..., :, -1].max()) < 0.03
    assert torch.all(w[0, 0, 20, 1:5] > w[0, 0, 20, 0:4])  # rising over the feather (25 % of the half-size)
    assert float(w[..., 20, 20]) == pytest.approx(1.0)


def test_zero_parameters_render_the_original(image):
    p = make("tanh")
    out, applied = p.render_full(image)
    assert torch.allclose(out, image, atol=1e-5)
    assert applied["max_delta"] == 0 and applied["max_flow_px"] == 0


def test_gradcheck_of_a_view_render():
    torch.manual_seed(1)
    h, w = 12, 16
    whole = ViewGeometry(box=(0, 0, w, h), size=(h, w))
    p = Perturbation((h, w), whole, [], Bounds(0.05, 0.03), uniform_bounds((h, w)), flow_grid=4).double()
    clean = torch.rand(1, 3, h, w, dtype=torch.float64)
    with torch.no_grad():
        for t in p.parameters():
            t.normal_(0, 0.5)

    def f(noise, flow):
        return torch.func.functional_call(p, {"noise.0": noise, "flow": flow}, ([clean],))[0]

    # grid_sample is piecewise linear in the sampling position: check away from kinks with a small eps
    assert torch.autograd.gradcheck(f, (p.noise[0].detach().clone().requires_grad_(), p.flow.detach().clone().requires_grad_()),
                                    eps=1e-7, atol=1e-4, rtol=1e-3)


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        Bounds(mode="clip")


# --- expectation over transformations ---------------------------------------------------------------

def test_differentiable_jpeg_matches_a_real_encoder():
    """Our JPEG approximation is close to libjpeg's output on a real photo, and has a gradient."""
    import io

    import numpy as np
    from PIL import Image

    from conftest import shared_data
    from ghostmesh_daemon.engine.eot import jpeg

    im = Image.open(shared_data("faces", "obama", "obama.jpg")).convert("RGB").crop((300, 100, 556, 356))
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 255
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=75, subsampling=2)
    real = torch.from_numpy(np.asarray(Image.open(buf)).copy()).permute(2, 0, 1)[None].float() / 255
    ours = jpeg(x.requires_grad_(), 75)
    err_ours = (ours.detach() - real).abs().mean()
    assert err_ours < 0.012, err_ours  # libjpeg's fixed-point DCT and chroma filter differ slightly
    assert (x - real).abs().mean() > 2 * err_ours  # and it is much closer than doing nothing
    ours.sum().backward()
    assert x.grad.abs().sum() > 0


def test_upload_draws_are_seeded_and_keep_the_view_size():
    from ghostmesh_daemon.engine.eot import apply, draw

    a = [draw(torch.Generator().manual_seed(3)) for _ in range(3)]
    b = [draw(torch.Generator().manual_seed(3)) for _ in range(3)]
    assert a == b
    x = torch.rand(1, 3, 70, 90, requires_grad=True)
    for d in a:
        y = apply(x, d)
        assert y.shape == x.shape
        assert 0.3 <= d.scale <= 1.0 and 60 <= d.quality <= 95
    y.sum().backward()
    assert x.grad.abs().sum() > 0


def test_jpeg_codec_with_a_files_own_tables_matches_libjpeg_on_its_block_grid():
    """The round trip with the file's tables and chroma layout tracks libjpeg, also for a view that
    starts off the 8x8 grid (``origin`` puts the blocks where the encoder's are)."""
    import io

    import numpy as np
    from PIL import Image

    from conftest import shared_data
    from ghostmesh_daemon.engine.eot import JpegCodec, jpeg_round_trip

    src = Image.open(shared_data("faces", "obama", "obama.jpg"))
    tables = [list(v) for _, v in sorted(src.quantization.items())]
    im = src.convert("RGB").crop((296, 96, 552, 352))
    noisy = np.clip(np.asarray(im).astype(np.float32) + np.random.default_rng(0).normal(0, 6, (256, 256, 3)), 0, 255).round()
    x = torch.from_numpy(noisy).permute(2, 0, 1)[None].float() / 255
    for sub in (0, 2):
        buf = io.BytesIO()
        Image.fromarray(noisy.astype(np.uint8)).save(buf, format="JPEG", qtables=tables, subsampling=sub)
        real = torch.from_numpy(np.asarray(Image.open(buf)).copy()).permute(2, 0, 1)[None].float() / 255
        codec = JpegCodec.from_pillow(tables, 95, sub)
        ours = jpeg_round_trip(x, codec, exact=True)
        # libjpeg's integer colour conversion and DCT round some coefficients the other way, so
        # pixels differ by ~1.5 levels; what the optimizer needs is the same amount of damage.
        err, damage, ours_damage = ((ours - real).abs().mean(), (x - real).abs().mean(), (x - ours).abs().mean())
        assert err < 0.5 * damage, (sub, err, damage)
        assert abs(ours_damage - damage) < 0.1 * damage, (sub, ours_damage, damage)
        # A view whose top-left sits at (3, 5) of that image: same pixels as the full round trip there.
        view = jpeg_round_trip(x[..., 3:200, 5:200], codec, origin=(3, 5), exact=True)
        inner = (view - ours[..., 3:200, 5:200])[..., 16:-16, 16:-16]  # away from the replicated edges
        assert inner.abs().max() < 1e-4, (sub, inner.abs().max())


def test_jpeg_codec_tables_and_subsampling_from_pillow():
    from ghostmesh_daemon.engine.eot import JpegCodec

    q90 = JpegCodec.from_quality(90)
    assert JpegCodec.from_pillow(None, 90, 2) == q90
    c = JpegCodec.from_pillow([list(q90.luma), list(q90.chroma)], 95, 0)
    assert c.luma == q90.luma and c.subsampling == (1, 1)
    assert JpegCodec.from_pillow([list(q90.luma)], 95, 1).chroma == q90.luma  # one table for every component
    with pytest.raises(ValueError):
        JpegCodec((1,) * 10, q90.chroma)


#: dlib's 5 points in chip pixels: 0-1 the image-right eye's corners, 2-3 the image-left eye's, 4 the nose.
CHIP_POINTS = torch.tensor([[110.0, 62.0], [94.0, 62.0], [40.0, 62.0], [56.0, 62.0], [75.0, 100.0]])


def _tilted_face():
    from ghostmesh_daemon.engine.scene import Face

    c, s = math.cos(0.2), math.sin(0.2)
    a = torch.tensor([[0.8 * c, -0.8 * s, 60.0], [0.8 * s, 0.8 * c, 40.0]])
    return Face(box=(50.0, 40.0, 180.0, 170.0), landmarks=CHIP_POINTS @ a[:, :2].T + a[:, 2], chip_to_image=a)


def _realigned(face, image, **draw):
    from ghostmesh_daemon.engine.eot import AlignDraw, realign
    from ghostmesh_daemon.engine.scene import FaceView, ViewGeometry

    geometry = ViewGeometry(box=(20, 10, 20 + image.shape[-1], 10 + image.shape[-2]), size=tuple(image.shape[-2:]))
    d = {"scale": 1.0, "angle": 0.0, "shift": (0.0, 0.0), "mirrored": False, **draw}
    return FaceView(face, geometry, image), realign(FaceView(face, geometry, image), AlignDraw(**d))


def test_a_neutral_realignment_changes_nothing():
    face = _tilted_face()
    _, same = _realigned(face, torch.rand(1, 3, 220, 240))
    assert torch.allclose(same.face.chip_to_image, face.chip_to_image, atol=1e-5)
    assert torch.allclose(same.face.landmarks, face.landmarks, atol=1e-5)


def test_a_mirrored_realignment_shows_every_target_the_mirror_image_of_its_crop():
    from ghostmesh_daemon.engine.geometry import affine_patch
    from ghostmesh_daemon.targets.arcface_crop import crop_to_view

    face = _tilted_face()
    # smooth, so that the eye-aligned crop's sub-pixel asymmetry (the ArcFace template's eyes are
    # centred 0.4 px off its middle, which the mirror turns into a pixel) stays small
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 22, 24, generator=torch.Generator().manual_seed(0)),
                                            size=(220, 240), mode="bicubic", align_corners=False)
    view, mirrored = _realigned(face, image, mirrored=True)
    chip = affine_patch(view.image, view.chip_to_view(), (150, 150))
    assert torch.allclose(affine_patch(mirrored.image, mirrored.chip_to_view(), (150, 150)), chip.flip(-1), atol=1e-4)
    crop = affine_patch(view.image, crop_to_view(view).float(), (112, 112))
    crop_m = affine_patch(mirrored.image, crop_to_view(mirrored).float(), (112, 112))
    to_mirror, to_same = float((crop_m - crop.flip(-1)).abs().mean()), float((crop_m - crop).abs().mean())
    assert to_mirror < 0.25 * to_same, (to_mirror, to_same)


def test_realignment_scales_and_turns_about_the_chip_centre():
    from ghostmesh_daemon.engine.eot import draw_alignment

    face = _tilted_face()
    image = torch.rand(1, 3, 220, 240)
    bigger = _realigned(face, image, scale=1.1, angle=0.05)[1].face
    centre = torch.tensor([74.5, 74.5, 1.0])
    assert torch.allclose(bigger.chip_to_image @ centre, face.chip_to_image @ centre, atol=1e-4)
    ratio = torch.det(bigger.chip_to_image[:, :2]) / torch.det(face.chip_to_image[:, :2])
    assert abs(float(ratio) - 1.21) < 1e-4
    moved = _realigned(face, image, shift=(0.1, 0.0))[1].face
    step = moved.chip_to_image @ centre - face.chip_to_image @ centre
    # a tenth of the chip's side along the chip's own (tilted) x axis
    assert torch.allclose(step, 0.1 * 149 * face.chip_to_image[:, 0] / face.chip_to_image[:, 0].norm() * 0.8, atol=1e-3)
    draws = [draw_alignment(torch.Generator().manual_seed(5), 0.08) for _ in range(2)]
    assert draws[0] == draws[1] and 0.92 <= draws[0].scale <= 1.08 and abs(draws[0].angle) <= 0.08


def test_blotchiness_counts_same_signed_patches_not_grain(image):
    """The coarse-noise penalty: a saturated patch costs the square of its bound (in mid-tone JNDs),
    a pixel-by-pixel random sign of the same amplitude almost nothing, no noise exactly nothing."""
    clean = [clean_view(image, g) for g in make().views]
    p = make(whole_noise=False)
    assert float(p.blotchiness(clean, sigma=2.0).detach()) == 0.0
    with torch.no_grad():
        p.noise[1].fill_(50.0)  # every pixel at +bound: one big patch
    patch = float(p.blotchiness(clean, sigma=2.0).detach())
    torch.manual_seed(1)
    with torch.no_grad():
        p.noise[1].copy_(torch.randn_like(p.noise[1]).sign() * 50.0)  # the same amplitude as grain
    grain = float(p.blotchiness(clean, sigma=2.0).detach())
    # luma at 0.05 and chroma at 0.025, in units of 3/255, squared, faded by the face's window
    assert 0.2 * (0.05 * 255 / 3) ** 2 < patch < (0.05 * 255 / 3) ** 2
    assert grain < 0.05 * patch
    p.noise[1].grad = None
    p.blotchiness(clean, sigma=2.0).backward()
    assert p.noise[1].grad is not None and float(p.noise[1].grad.abs().sum()) > 0
