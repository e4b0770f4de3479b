"""The optimization loop on a real photo with the real face model: it protects, stops, and is repeatable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ghostmesh_daemon.engine import evaluate, protect_image, settings_for
from ghostmesh_daemon.engine.perception import FaceRegion, rgb_limit
from ghostmesh_daemon.faces import detect_faces

from conftest import downscaled_face, shared_data


@pytest.fixture(scope="module")
def small_face():
    return downscaled_face("faces", "biden", "biden.jpg")


def test_protection_moves_the_face_away_within_budget(small_face, face_target, lpips_model):
    x, faces = small_face
    s = settings_for("stealth", steps=25, face_goal=0.7)
    out = protect_image(x, faces, [face_target], lpips_model, s)
    assert out.image.shape == x.shape
    d = out.targets["face"].distance_after[0]
    assert d > 0.45, d  # from 0 to well on the way in 25 steps
    assert out.lpips <= s.lpips_budget + 0.01
    assert out.face_lpips[0] <= s.face_lpips_budget + 0.01
    assert out.max_delta <= rgb_limit(s.noise_limit, s.chroma_ratio) + 1e-6
    assert out.max_flow_px <= s.flow_limit * FaceRegion.of(faces[0]).side_px + 1e-3
    assert (out.image - x).abs().max() > 0.005


def test_same_seed_same_result(small_face, face_target, lpips_model):
    x, faces = small_face
    s = settings_for("stealth", steps=3, seed=7)
    a = protect_image(x, faces, [face_target], lpips_model, s)
    b = protect_image(x, faces, [face_target], lpips_model, s)
    assert torch.equal(a.image, b.image)


def test_early_stop_when_every_goal_is_met(small_face, face_target, lpips_model):
    import copy

    x, faces = small_face
    target = copy.copy(face_target)  # same weights, a near goal (the goal is the target's own)
    target.goal = 0.05
    s = settings_for("stealth", steps=40)
    out = protect_image(x, faces, [target], lpips_model, s)
    assert out.stopped_early and out.steps < 40
    assert all(out.targets["face"].protected)


def test_should_stop_interrupts(small_face, face_target, lpips_model):
    x, faces = small_face
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    out = protect_image(x, faces, [face_target], lpips_model, settings_for("stealth", steps=50), should_stop=stop)
    assert out.interrupted and out.steps <= 2


def test_no_face_means_nothing_to_push(face_target, lpips_model):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 80)
    out = protect_image(x, [], [face_target], lpips_model, settings_for("stealth", steps=10))
    assert out.steps == 0 and out.targets["face"].distance_after == []
    assert torch.allclose(out.image, x, atol=1e-6)


def test_pgd_mode_protects_and_respects_the_bound(small_face, face_target, lpips_model):
    x, faces = small_face
    s = settings_for("stealth", steps=15, mode="pgd")
    out = protect_image(x, faces, [face_target], lpips_model, s)
    assert out.max_delta <= rgb_limit(s.noise_limit, s.chroma_ratio) + 1e-6
    assert out.targets["face"].distance_after[0] > 0.2


def test_evaluate_identical_images_is_zero(small_face, face_target, lpips_model):
    x, faces = small_face
    ev = evaluate(x, x.clone(), faces, [face_target], lpips_model, settings_for("stealth"))
    assert ev.targets["face"].distance_after[0] < 1e-4
    assert ev.lpips < 1e-6 and ev.face_lpips[0] < 1e-6
    with pytest.raises(ValueError, match="same shape"):
        evaluate(x, x[..., :10, :], faces, [face_target], lpips_model, settings_for("stealth"))


def test_siglip_target_is_pushed_too(small_face, tiny_siglip, lpips_model):
    from ghostmesh_daemon.targets import create_target

    x, faces = small_face
    target = create_target("siglip", model=tiny_siglip)
    out = protect_image(x, faces, [target], lpips_model, settings_for("stealth", steps=20, image_goal=0.99))
    moved = 1 - out.targets["siglip"].cosine_after[0]
    # a random perturbation of the same size barely moves the embedding; the optimized one does
    torch.manual_seed(1)
    noise = (x + 0.05 * torch.randn_like(x).sign()).clamp(0, 1)
    from ghostmesh_daemon.engine.scene import Scene

    with torch.no_grad():
        ref, emb = target.embed(Scene(whole=x)), target.embed(Scene(whole=noise))
    random_moved = 1 - float(torch.nn.functional.cosine_similarity(ref, emb))
    assert moved > 3 * random_moved, (moved, random_moved)


def test_early_stop_goes_past_the_goal_by_the_margin(small_face, face_target, lpips_model):
    """The optimizer stops only once each distance is ``goal_margin`` past the goal, so the final
    render and the written file, which lose a little, still reach the goal itself."""
    import copy

    x, faces = small_face
    target = copy.copy(face_target)  # same weights, a nearer goal
    target.goal = 0.3
    s = settings_for("stealth", steps=60, goal_margin=0.5)
    out = protect_image(x, faces, [target], lpips_model, s)
    assert out.stopped_early
    assert out.history[-1]["score"] >= 1.0  # the score counts the margin: 1.0 is goal * 1.5
    assert out.history[-2]["score"] < 1.0  # and it did not stop at the goal itself
    assert out.targets["face"].distance_after[0] >= 0.3 * 1.5 * 0.98


def test_realigned_faces_count_in_the_measure_and_get_pushed(small_face, face_target, lpips_model):
    """With ``align_samples`` each target's distance is the mean over the face as aligned and as
    re-aligned, and the optimizer pushes the mirrored chip away too."""
    from ghostmesh_daemon.engine.eot import AlignDraw
    from ghostmesh_daemon.engine.optimize import Evaluator, plan_views
    from ghostmesh_daemon.engine.synthesis import clean_view

    x, faces = small_face
    # stealth's bound of before (a full JND, a 0.6 % warp): room enough in 16 steps to see the mirror pushed
    s = settings_for("stealth", steps=16, align_samples=1, face_goal=0.7, jnd_scale=1.0, flow_limit=0.006)
    out = protect_image(x, faces, [face_target], lpips_model, s)
    whole, views = plan_views(tuple(x.shape[-2:]), faces, s, need_detail=False)
    ev = Evaluator([clean_view(x, g) for g in [whole, *views]], [whole, *views], faces, [face_target], lpips_model, s)
    scene = ev.scene([clean_view(out.image, g) for g in [whole, *views]])
    mirror = AlignDraw(scale=1.0, angle=0.0, shift=(0.0, 0.0), mirrored=True)
    with torch.no_grad():
        plain = ev.measure(scene)["targets"]["face"][1]
        both = ev.measure(scene, aligns=[mirror])["targets"]["face"][1]
        mirrored = face_target.distance(ev.references["face"], face_target.embed(ev.realigned(scene, mirror)))
    assert torch.allclose(both, (plain + mirrored) / 2, atol=1e-5)
    assert float(mirrored[0]) > 0.35, float(mirrored[0])  # the mirror image is not recognised either


def _written_jpeg(image: torch.Tensor, tables, subsampling: int) -> torch.Tensor:
    import io

    rgb = (image[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", qtables=tables, subsampling=subsampling)
    return torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255


def test_jpeg_aware_protection_keeps_the_budget_in_the_written_file(face_target, lpips_model):
    """A full-size photo written with its own JPEG tables (libjpeg encodes here, not our model): judged
    through the codec while optimizing, the written file's native face LPIPS stays within the budget."""
    from PIL import JpegImagePlugin

    from ghostmesh_daemon.engine.eot import JpegCodec

    src = Image.open(shared_data("faces", "biden", "biden.jpg"))
    tables, sub = [list(v) for _, v in sorted(src.quantization.items())], JpegImagePlugin.get_sampling(src)
    rgb = np.asarray(src.convert("RGB")).copy()
    x, faces = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255, detect_faces(rgb)
    s = settings_for("stealth", steps=40)
    aware = protect_image(x, faces, [face_target], lpips_model, s, codec=JpegCodec.from_pillow(tables, 95, sub))
    written = evaluate(x, _written_jpeg(aware.image, tables, sub), faces, [face_target], lpips_model, s)
    assert written.face_lpips[0] <= s.face_lpips_budget
    assert written.targets["face"].distance_after[0] > 0.5  # and the written face is well on its way


def test_target_weights_scale_each_identity_term(small_face, face_target, lpips_model):
    """An ensemble weight of 0 leaves a target measured but unpushed; a larger weight pushes harder."""
    x, faces = small_face
    runs = {w: protect_image(x, faces, [face_target], lpips_model,
                             settings_for("stealth", steps=6, target_weights=(("face", w),)))
            for w in (0.0, 1.0)}
    assert runs[0.0].targets["face"].distance_after[0] < 0.02  # only the vertical-flow penalty acted
    assert runs[1.0].targets["face"].distance_after[0] > 5 * max(runs[0.0].targets["face"].distance_after[0], 0.01)
    assert settings_for("stealth", target_weights=(("face", 2.0),)).to_dict()["target_weights"] == {"face": 2.0}
    # a preset's weights are defaults, replaced target by target by the user's
    assert settings_for("panic").weight_of("face") == 3.0 and settings_for("stealth").weight_of("face") == 1.0
    mixed = settings_for("panic", target_weights=(("face", 1.0), ("sface", 0.5)))
    assert (mixed.weight_of("face"), mixed.weight_of("sface"), mixed.weight_of("mobileface")) == (1.0, 0.5, 1.0)
    assert settings_for("panic", target_weights=()).weight_of("face") == 3.0  # an empty list (the config's default) keeps them
    with pytest.raises(ValueError):
        settings_for("stealth", target_weights=(("face", -1.0),))


def test_gradnorm_balance_gives_each_push_the_same_norm():
    """Two identity pushes whose gradients differ 100-fold reach the parameters with the same norm,
    together as large as the two norms' mean each; the loss's own gradient is added unchanged."""
    from ghostmesh_daemon.engine.optimize import _backward

    theta = torch.zeros(4, requires_grad=True)
    rendered = theta * 2  # the "render": one differentiable step between parameters and pushes
    u, v = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0])
    loss = (rendered * torch.tensor([0, 0, 0, 1.0])).sum()
    _backward(loss, [(rendered * u).sum(), 100 * (rendered * v).sum()], [rendered])
    grad = theta.grad.tolist()
    assert grad[0] == pytest.approx(grad[1]) and grad[0] == pytest.approx(2 * (1 + 100) / 2)
    assert grad[2] == 0 and grad[3] == pytest.approx(2.0)
    theta.grad = None
    rendered = theta * 2  # "shortfall": shares 1 and 3 split the same total push 1:3
    _backward(rendered.sum() * 0, [(rendered * u).sum(), 100 * (rendered * v).sum()], [rendered], shares=[1.0, 3.0])
    grad = theta.grad.tolist()
    assert grad[1] == pytest.approx(3 * grad[0]) and grad[0] + grad[1] == pytest.approx(2 * (1 + 100))
    theta.grad = None
    rendered = theta * 2
    _backward((rendered * (u + 100 * v)).sum(), [], [rendered])  # "sum": the plain gradient
    assert theta.grad.tolist() == pytest.approx([2.0, 200.0, 0, 0])


def test_shortfall_is_the_distance_still_to_go_of_rows_not_past_the_goal():
    from ghostmesh_daemon.engine.optimize import _shortfall

    dist = torch.tensor([0.2, 0.6, 1.2])
    row = (torch.zeros(3), dist, dist >= 1.0)
    assert _shortfall(row, 1.0) == pytest.approx((0.8 + 0.4) / 2)
    assert _shortfall((torch.zeros(1), torch.tensor([1.5]), torch.tensor([True])), 1.0) == 0.0


def test_balanced_pushes_with_one_target_are_the_summed_run(small_face, face_target, lpips_model):
    """With one target there is nothing to share: balanced runs are the summed run, and they move the face."""
    x, faces = small_face
    runs = {b: protect_image(x, faces, [face_target], lpips_model, settings_for("stealth", steps=6, balance=b))
            for b in ("sum", "gradnorm", "shortfall")}
    for b in ("gradnorm", "shortfall"):
        assert runs[b].targets["face"].distance_after[0] > 0.05
        assert runs[b].targets["face"].distance_after[0] == pytest.approx(runs["sum"].targets["face"].distance_after[0], abs=1e-4)
    with pytest.raises(ValueError):
        settings_for("stealth", balance="max")
