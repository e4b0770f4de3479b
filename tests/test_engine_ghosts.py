"""Ghost networks (feature dropout while optimizing): what it erodes, what it must leave alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ghostmesh_daemon.engine import protect_image, settings_for
from ghostmesh_daemon.engine.ghosts import FeatureDropout
from ghostmesh_daemon.engine.optimize import Evaluator, plan_views
from ghostmesh_daemon.engine.synthesis import clean_view

from conftest import downscaled_face


@pytest.fixture(scope="module")
def small_face():
    return downscaled_face("faces", "obama", "obama3.jpg", size=400)


def test_every_convolution_drops_its_share_and_nothing_else_changes() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 4, 32, 32) + 0.1
    w = torch.rand(8, 4, 3, 3) + 0.1  # positive: every output unit is positive, so a zero is a dropped unit
    lin = torch.rand(5, 16)
    plain = F.conv2d(x, w, padding=1)
    with FeatureDropout(0.3):
        eroded = F.conv2d(x, w, padding=1)
        module = torch.nn.Conv2d(4, 8, 3, padding=1, bias=False).requires_grad_(False)
        module.weight.copy_(w)
        via_module = module(x)
        linear = F.linear(x[:, 0, 0, :16], lin)
    dropped = (eroded == 0).float().mean()
    assert 0.27 < float(dropped) < 0.33
    kept = eroded != 0
    assert torch.allclose(eroded[kept], plain[kept] / 0.7, rtol=1e-5)
    assert 0.27 < float((via_module == 0).float().mean()) < 0.33  # nn.Conv2d goes through the same function
    assert torch.equal(linear, F.linear(x[:, 0, 0, :16], lin))  # only convolutions
    assert torch.equal(F.conv2d(x, w, padding=1), plain)  # gone after the block


def test_ghosts_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match="feature dropout"):
        FeatureDropout(1.0)
    with pytest.raises(ValueError, match="feature_dropout"):
        settings_for("panic", feature_dropout=-0.1)


def test_the_targets_are_eroded_and_lpips_is_not(small_face, face_target, lpips_model) -> None:
    x, faces = small_face
    s = settings_for("panic")
    whole, views = plan_views(tuple(x.shape[-2:]), faces, s, need_detail=False)
    geoms = [whole, *views]
    ev = Evaluator([clean_view(x, g) for g in geoms], geoms, faces, [face_target], lpips_model, s)
    noisy = ev.scene([clean_view((x + 0.03 * torch.randn_like(x)).clamp(0, 1), g) for g in geoms])
    torch.manual_seed(0)
    with torch.no_grad():
        plain = ev.measure(noisy)
        ghost = ev.measure(noisy, feature_dropout=0.02)
    d_plain, d_ghost = float(plain["targets"]["face"][1][0]), float(ghost["targets"]["face"][1][0])
    assert abs(d_ghost - d_plain) > 0.02, (d_plain, d_ghost)
    assert float(ghost["face_lpips"][0]) == pytest.approx(float(plain["face_lpips"][0]), abs=1e-7)


def test_a_run_with_ghosts_is_repeatable_and_judged_by_the_model_itself(small_face, face_target, lpips_model) -> None:
    x, faces = small_face
    s = settings_for("stealth", steps=6, face_goal=0.9, feature_dropout=0.02, seed=3)
    a = protect_image(x, faces, [face_target], lpips_model, s)
    b = protect_image(x, faces, [face_target], lpips_model, s)
    plain = protect_image(x, faces, [face_target], lpips_model, settings_for("stealth", steps=6, face_goal=0.9, seed=3))
    assert torch.equal(a.image, b.image)
    assert not torch.equal(a.image, plain.image)  # the ghosts steered
    # Every kept step was judged by dlib's network as it is: the best score recorded is what the image
    # it returned measures without erosion (a ghost's distance would differ from it by ~0.1).
    best = max(h["score"] for h in a.history if all(v <= s.face_lpips_budget for v in h["face_lpips"]))
    with torch.no_grad():
        whole, views = plan_views(tuple(x.shape[-2:]), faces, s, need_detail=False)
        ev = Evaluator([clean_view(x, g) for g in [whole, *views]], [whole, *views], faces, [face_target], lpips_model, s)
        d = float(ev.measure(ev.scene([clean_view(a.image, g) for g in [whole, *views]]))["targets"]["face"][1][0])
    assert d / (face_target.goal * (1 + s.goal_margin)) == pytest.approx(best, abs=0.01)
