"""The benchmarks' independent quality measures (benchmarks/quality.py), with real models, at native resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import quality as q
from ghostmesh_daemon.engine.losses import tiles

from conftest import shared_data

pytest.importorskip("piq", reason="piq is a test dependency (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def photo() -> tuple[np.ndarray, list]:
    """A small photo of ../shared/data/faces as the pipeline decodes it (uint8) and its faces (engine ``Face``
    records from dlib). kit_harington/john2.jpeg: its face crop is 202 px, enough for MS-SSIM's five scales,
    and small enough to keep these tests fast on two cores."""
    from ghostmesh_daemon.faces import detect_faces

    rgb = q.read_uint8(shared_data("faces", "kit_harington", "john2.jpeg"))
    faces = detect_faces(rgb)
    assert faces, "dlib finds the face"
    return rgb, faces


@pytest.fixture(scope="module")
def crop(photo) -> torch.Tensor:
    rgb, faces = photo
    return q.to_tensor(q.face_crops(rgb, rgb, faces[:1])[0].original)


@pytest.fixture(scope="module")
def measured(crop) -> dict:
    """The crop against itself and its noise reference (seed 3), through the public functions."""
    # the identity check on the crop's top-left 161 px (the smallest that fits MS-SSIM's five scales), to stay fast
    return {"same": q.independent_measures(crop[..., :161, :161], crop[..., :161, :161].clone(), device="cpu"),
            "noise": q.noise_reference(crop, seed=3, device="cpu")}


def test_face_crop_is_the_chip_box_at_native_size(photo):
    from ghostmesh_daemon.engine.geometry import bounding_box

    rgb, faces = photo
    (c,) = q.face_crops(rgb, rgb, faces[:1])
    x0, y0, x1, y1 = bounding_box(faces[0].chip_corners(), *rgb.shape[:2])
    assert c.box == (x0, y0, x1, y1)
    assert c.original.shape == (y1 - y0, x1 - x0, 3)
    assert np.array_equal(c.original, rgb[y0:y1, x0:x1])


def test_identical_crops_are_perfect(measured):
    m = measured["same"]
    assert m["lpips_alex"] == pytest.approx(0.0, abs=1e-7)
    assert m["lpips_vgg"] == pytest.approx(0.0, abs=1e-7)
    assert m["ms_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert m["haarpsi"] == pytest.approx(1.0, abs=1e-4)
    assert m["ms_ssim_scales"] == 5  # 161 px fits all five scales


def test_noise_reference_is_worse_than_identical_for_every_measure(crop, measured):
    noisy = q.noise_crop(crop, seed=3)
    step = (noisy - crop).abs() * 255
    assert float(step.max()) <= 4 + 1e-3 and float(step.mean()) > 1.5  # ±4/255, 8-bit: integer steps up to 4
    assert torch.allclose(noisy * 255, (noisy * 255).round(), atol=1e-3)
    assert torch.equal(noisy, q.noise_crop(crop, seed=3))  # seeded
    ref, same = measured["noise"], measured["same"]
    for m in ("lpips_alex", "lpips_vgg"):
        assert ref[m] > same[m] + 1e-3, m
    for m in ("ms_ssim", "haarpsi"):
        assert ref[m] < same[m] - 1e-3, m
    # and the judgement uses each measure's direction
    assert q.within_reference("lpips_vgg", same["lpips_vgg"], ref["lpips_vgg"])
    assert q.within_reference("ms_ssim", same["ms_ssim"], ref["ms_ssim"])
    assert not q.within_reference("haarpsi", ref["haarpsi"] - 0.01, ref["haarpsi"])


def test_small_crop_uses_fewer_ms_ssim_scales():
    assert q.ms_ssim_scales(161, 400) == 5
    assert q.ms_ssim_scales(150, 150) == 4
    assert q.ms_ssim_scales(10, 10) == 0
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 60, 70, generator=g)
    m = q.independent_measures(a, q.noise_crop(a, 1), device="cpu")
    assert m["ms_ssim_scales"] == 3 and 0 < m["ms_ssim"] < 1


def test_lpips_many_matches_lpips_itself(crop):
    model = q.lpips_model("vgg", "cpu")
    crop = crop[..., :96, :128]
    noisy = q.noise_crop(crop, seed=5)
    with torch.no_grad():
        direct = float(model(crop, noisy, normalize=True))
    assert q.lpips_many(model, crop, [noisy])[0] == pytest.approx(direct, rel=1e-5)


def test_whole_photo_lpips_native_tiles():
    g = torch.Generator().manual_seed(0)
    # smooth structure plus texture, 2000 x 1500: 2 x 2 tiles of at most 1024 px
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 30, 40, generator=g), size=(1500, 2000), mode="bicubic")
    a = (base + 0.05 * torch.rand(1, 3, 1500, 2000, generator=g)).clamp(0, 1)
    assert tiles(1500, 2000, 1024) == [(0, 750, 0, 1000), (0, 750, 1000, 2000), (750, 1500, 0, 1000), (750, 1500, 1000, 2000)]
    value = q.whole_photo_lpips_native(a, q.noise_crop(a, 2), device="cpu")
    assert 0.001 < value < 0.5
    # an image against itself is 0, and the value is the area-weighted mean of the tiles, each measured by
    # lpips itself (a smaller image in 2 x 3 uneven tiles, to stay fast)
    small, noisy = a[..., :400, :900], q.noise_crop(a[..., :400, :900], 4)
    assert q.whole_photo_lpips_native(small, small, tile=384, device="cpu") == pytest.approx(0.0, abs=1e-7)
    model = q.lpips_model("alex", "cpu")
    boxes = tiles(400, 900, 384)
    assert len(boxes) == 6 and all(y1 - y0 <= 384 and x1 - x0 <= 384 for y0, y1, x0, x1 in boxes)
    with torch.no_grad():
        parts = [(float(model(small[..., y0:y1, x0:x1], noisy[..., y0:y1, x0:x1], normalize=True)), (y1 - y0) * (x1 - x0))
                 for y0, y1, x0, x1 in boxes]
    tiled = q.whole_photo_lpips_native(small, noisy, tile=384, device="cpu")
    assert tiled == pytest.approx(sum(v * n for v, n in parts) / (400 * 900), rel=1e-5)


def test_contact_sheet_panels_are_native_crops(photo, tmp_path):
    rgb, faces = photo
    rng = np.random.default_rng(0)
    protected = (rgb.astype(np.int16) + rng.integers(-3, 4, rgb.shape)).clip(0, 255).astype(np.uint8)
    dest = tmp_path / "sheet.jpg"
    layout = q.native_contact_sheet([("obama/obama.jpg", rgb, protected, faces[:1])], dest)
    (item,) = layout
    x0, y0, x1, y1 = item["box"]
    assert item["window"] == item["box"]  # under 640 px: the whole crop, unscaled
    with Image.open(dest) as im:
        assert im.format == "JPEG"
        sheet = np.asarray(im.convert("RGB")).astype(np.int16)
    for name, source in (("before", rgb), ("after", protected)):
        px, py, pw, ph = item["panels"][name]
        assert (pw, ph) == (x1 - x0, y1 - y0)
        panel = sheet[py:py + ph, px:px + pw]
        assert panel.shape == (y1 - y0, x1 - x0, 3)
        err = np.abs(panel - source[y0:y1, x0:x1].astype(np.int16))
        assert err.mean() < 4 and np.percentile(err, 99) < 16, name  # JPEG 92 at 4:4:4, nothing more
        shifted = np.abs(sheet[py:py + ph, px + 1:px + pw + 1] - source[y0:y1, x0:x1].astype(np.int16))
        assert shifted.mean() > err.mean() + 1, name  # and exactly there: one column off is clearly worse
    px, py, pw, ph = item["panels"]["diff"]
    assert (pw, ph) == (x1 - x0, y1 - y0)
    diff = np.abs(protected[y0:y1, x0:x1].astype(np.int16) - rgb[y0:y1, x0:x1].astype(np.int16)) * q.DIFF_GAIN
    assert np.abs(sheet[py:py + ph, px:px + pw] - diff.clip(0, 255)).mean() < 8


def test_contact_sheet_window_for_large_crops(tmp_path):
    from ghostmesh_daemon.engine.scene import Face

    # a synthetic face whose chip spans 900 px: shown as a 640 px window at 100 %, not scaled
    s = 900 / 149
    face = Face(box=(350.0, 250.0, 950.0, 850.0), landmarks=torch.zeros(5, 2),
                chip_to_image=torch.tensor([[s, 0.0, 200.0], [0.0, s, 100.0]]))
    g = np.random.default_rng(1)
    rgb = g.integers(0, 256, (1100, 1300, 3), dtype=np.uint8)
    layout = q.native_contact_sheet([("big", rgb, rgb, [face])], tmp_path / "big.jpg", diff=False)
    (item,) = layout
    assert item["box"] == (200, 100, 1101, 1001)
    wx0, wy0, wx1, wy1 = item["window"]
    assert (wx1 - wx0, wy1 - wy0) == (640, 640)
    assert (wx0 + wx1) / 2 == pytest.approx(650, abs=1) and (wy0 + wy1) / 2 == pytest.approx(550, abs=1)
    assert set(item["panels"]) == {"before", "after"}
    px, py, pw, ph = item["panels"]["before"]
    with Image.open(tmp_path / "big.jpg") as im:
        sheet = np.asarray(im.convert("RGB")).astype(np.int16)
    err = np.abs(sheet[py:py + ph, px:px + pw] - rgb[wy0:wy1, wx0:wx1].astype(np.int16))
    assert (pw, ph) == (640, 640) and err.mean() < 12  # random pixels: JPEG's worst case, still the same pixels


def test_measure_faces_reports_reference_and_verdicts():
    # kit_harington/john1.jpeg: a real 150 px face crop, under the 161 px that MS-SSIM's five scales need
    rgb = q.read_uint8(shared_data("faces", "kit_harington", "john1.jpeg"))
    rows = q.measure_faces(rgb, rgb, None, device="cpu")
    (row,) = rows
    assert (row["width"], row["height"]) == (150, 150) and row["ms_ssim_scales"] == 4
    assert set(row["noise_reference"]) == set(q.MEASURES)
    assert all(row["within_noise"][m] for m in q.MEASURES)  # identical: within every reference
    assert row["two_unoptimized_within"]
    summary = q.summarize([{"photo": "john1", "whole_photo_lpips_native": 0.0, "faces": rows}])
    assert summary["two_unoptimized_within_noise"] == 1.0 and summary["lpips_vgg_within_noise"] == 1.0
    assert summary["small_crops_ms_ssim"] == ["john1#0: 4 scales"]
