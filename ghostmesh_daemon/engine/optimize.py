"""The optimization loop: one photo in, its protected pixels out. Pure torch; no files, no globals.

Every step renders only the views the losses need (the whole photo at the work resolution and one
view per face), which keeps a step close to the cost of the models themselves whatever the photo's
size; the full-resolution photo is rendered once, at the end.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import Tensor, nn

from . import eot
from .geometry import bounding_box, check_image, fit_within
from .ghosts import FeatureDropout
from .losses import ReferenceLPIPS, draw_view, hinge, identity_term, tiled_lpips
from .perception import shape_for
from .scene import Face, FaceView, Scene, ViewGeometry
from .settings import EngineSettings
from .synthesis import Bounds, Perturbation, clean_view

if TYPE_CHECKING:  # the engine only needs the protocol; targets import the engine's geometry
    from ..targets.base import Target

Progress = Callable[[int, int], None]

WARMUP_STEPS = 8
#: With a JPEG codec, the written version is measured at least every this many steps.
JUDGE_EVERY = 4


@dataclass
class TargetOutcome:
    """One target's numbers, per row (face or image), before and after."""

    cosine_before: list[float]
    cosine_after: list[float]
    distance_after: list[float]
    protected: list[bool]
    goal: float


@dataclass
class Outcome:
    """What :func:`protect_image` returns: the protected image and what the optimizer measured."""

    image: Tensor
    steps: int
    targets: dict[str, TargetOutcome]
    lpips: float
    lpips_resolution: tuple[int, int]
    face_lpips: list[float]
    max_delta: float
    max_flow_px: float
    seconds: float
    step_seconds: float  # median step
    stopped_early: bool
    interrupted: bool = False
    step_seconds_mean: float = 0.0  # what a step costs on average (some steps measure more than others)
    history: list[dict] = field(default_factory=list)
    method: dict[str, str] = field(default_factory=dict)  # how each quality figure was measured


def plan_views(image_hw: tuple[int, int], faces: Sequence[Face], settings: EngineSettings, need_detail: bool,
               native: bool = False) -> tuple[ViewGeometry, list[ViewGeometry]]:
    """Where the optimizer looks: the whole photo at the work size and a detailed view per face.

    A face view covers the chip's bounding box grown so that the chip lies inside the part of the
    view where its noise is not faded (the feather), plus the flow's reach. ``native`` keeps every
    face view at the photo's own resolution (the measure decisions and reports use), whatever its size.
    """
    H, W = image_hw
    # With an image-level target the whole view carries noise and must be detailed; otherwise it
    # only serves the whole-photo LPIPS hinge, which a coarser proxy tracks well (the report
    # measures the final photo at ``lpips_size``).
    longest = settings.work_size if need_detail else settings.whole_proxy_size
    whole = ViewGeometry(box=(0, 0, W, H), size=fit_within(H, W, longest))
    feather = Bounds().feather
    views = []
    for face in faces:
        corners = face.chip_corners()
        span = float((corners.max(0).values - corners.min(0).values).max())
        pad = span / 2 * (1 / (1 - feather) - 1) + 2 * settings.flow_limit * span + 2
        box = bounding_box(corners, H, W, pad)
        size = (box[3] - box[1], box[2] - box[0]) if native else fit_within(box[3] - box[1], box[2] - box[0], settings.face_view_size)
        views.append(ViewGeometry(box=box, size=size))
    return whole, views


def make_perturbation(x: Tensor, faces: Sequence[Face], settings: EngineSettings, whole: ViewGeometry,
                      face_geoms: list[ViewGeometry], need_detail: bool) -> Perturbation:
    """The perturbation of photo ``x`` with every per-pixel bound ``settings`` asks for (noise on the
    faces only, unless an image-level target ``need_detail``)."""
    bounds = Bounds(noise_limit=settings.noise_limit, flow_limit=settings.flow_limit, mode=settings.mode, grain=settings.grain,
                    detail_smooth=settings.detail_smooth)
    shape = shape_for(x, list(faces), noise_limit=settings.noise_limit, jnd_scale=settings.jnd_scale,
                      chroma_ratio=settings.chroma_ratio, flow_fraction=settings.flow_limit, noise_everywhere=need_detail,
                      flat=settings.jnd_flat, detail_bands=settings.detail_bands if settings.detail_gain else 0,
                      detail_gain=settings.detail_gain, detail_boost=settings.detail_boost, detail_pixels=settings.detail_pixels,
                      detail_scale=settings.detail_scale, eye_guard=settings.eye_guard)
    return Perturbation(tuple(x.shape[-2:]), whole, face_geoms, bounds, shape, settings.flow_grid,
                        whole_noise=need_detail).to(x.device)


def face_crop_box(view: FaceView) -> tuple[int, int, int, int]:
    """The chip's bounding box in view pixels: where the per-face LPIPS is measured."""
    a = view.geometry.image_to_view().float()
    corners = view.face.chip_corners() @ a[:, :2].T + a[:, 2]
    h, w = view.image.shape[-2:]
    return bounding_box(corners, h, w)


def _crop(image: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    x0, y0, x1, y1 = box
    return image[..., y0:y1, x0:x1]


class Evaluator:
    """Measures a candidate against the clean photo exactly as the optimizer does.

    Used during optimization and for the report (on the decoded output file), so the numbers a
    user reads are the ones the optimizer steered by.
    """

    def __init__(self, clean_views: list[Tensor], geometries: list[ViewGeometry], faces: Sequence[Face],
                 targets: Sequence[Target], lpips: nn.Module, settings: EngineSettings, goal_margin: float = 0.0,
                 native: bool = False) -> None:
        self.geometries = geometries
        self.goal_scale = 1.0 + goal_margin
        self.faces = list(faces)
        self.targets = list(targets)
        self.lpips = lpips
        self.settings = settings
        self.clean_scene = self.scene(clean_views)
        self.crop_boxes = [face_crop_box(v) for v in self.clean_scene.faces]
        self.whole_lpips = ReferenceLPIPS(lpips, self.clean_scene.whole, settings.lpips_size)
        face_size = None if native or not settings.face_lpips_size else settings.face_lpips_size
        self.face_lpips = [ReferenceLPIPS(lpips, _crop(c.image, box), face_size)
                           for c, box in zip(self.clean_scene.faces, self.crop_boxes)]
        with torch.no_grad():
            self.references = {t.name: t.embed(self.clean_scene).detach() for t in self.targets}

    def scene(self, views: list[Tensor]) -> Scene:
        return Scene(whole=views[0], faces=[FaceView(f, g, v) for f, g, v in zip(self.faces, self.geometries[1:], views[1:])])

    def lpips_whole(self, scene: Scene) -> Tensor:
        return self.whole_lpips(scene.whole)

    def lpips_faces(self, scene: Scene, views=None) -> list[Tensor]:
        """LPIPS of each face crop (the chip's bounding box) at the view's own resolution (or
        ``settings.face_lpips_size`` px when set), through one random view per face when ``views``."""
        views = views or [None] * len(self.face_lpips)
        return [ref(_crop(v.image, box), d) for v, ref, box, d in zip(scene.faces, self.face_lpips, self.crop_boxes, views)]

    def uploaded(self, scene: Scene, d: eot.UploadDraw) -> Scene:
        """``scene`` as one random upload would leave it (every view through the same draw)."""
        return Scene(
            whole=eot.apply(scene.whole, d, self.geometries[0].scale[1]),
            faces=[FaceView(v.face, v.geometry, eot.apply(v.image, d, v.geometry.scale[1])) for v in scene.faces],
        )

    @staticmethod
    def realigned(scene: Scene, d: eot.AlignDraw) -> Scene:
        """``scene`` with every face cropped as the re-alignment ``d`` would crop it."""
        return Scene(whole=scene.whole, faces=[eot.realign(v, d) for v in scene.faces])

    def written(self, scene: Scene, codec: eot.JpegCodec) -> Scene:
        """``scene`` as the JPEG writer will leave it: face views at the photo's own resolution go
        through ``codec`` on the photo's block grid. Downscaled views (faces larger than the face view)
        and the whole-photo view are left alone: at their scale the blocks are below a pixel."""
        faces = []
        for v in scene.faces:
            if v.geometry.scale == (1.0, 1.0):
                x0, y0, _, _ = v.geometry.box
                v = FaceView(v.face, v.geometry, eot.jpeg_round_trip(v.image, codec, origin=(y0, x0), exact=True))
            faces.append(v)
        return Scene(whole=scene.whole, faces=faces)

    def measure(self, scene: Scene, draws: Sequence[eot.UploadDraw] = (), aligns: Sequence[eot.AlignDraw] = (),
                whole_lpips: bool = True, feature_dropout: float = 0.0) -> dict:
        """Similarities, distances and LPIPS of ``scene`` (differentiable).

        With ``draws`` (uploads) or ``aligns`` (re-alignments of the faces), each target's similarity
        and distance are averaged over the scene itself and the scene after each draw (expectation
        over transformations), and a row counts as protected only when that average is past its goal.
        The reference stays the clean photo as aligned on it: another recogniser would compare the
        protected face, however it crops it, with the photos it already holds. ``feature_dropout`` runs
        the targets as ghost networks (``engine/ghosts.py``); LPIPS is never eroded.
        """
        scenes = [scene, *(self.uploaded(scene, d) for d in draws), *(self.realigned(scene, a) for a in aligns)]
        per_target = {}
        for t in self.targets:
            ref = self.references[t.name]
            # no mode at all without ghosts: a TorchFunctionMode routes every op through Python (1-2 %)
            with FeatureDropout(feature_dropout) if feature_dropout else nullcontext():
                embs = [t.embed(s) for s in scenes]
            sim = torch.stack([t.similarity(ref, e) for e in embs]).mean(0)
            dist = torch.stack([t.distance(ref, e) for e in embs]).mean(0)
            per_target[t.name] = (sim, dist, dist.detach() >= t.goal * self.goal_scale)
        lp = self.lpips_whole(scene) if whole_lpips else scene.whole.new_zeros(())
        return {"targets": per_target, "lpips": lp, "face_lpips": self.lpips_faces(scene)}


def protect_image(
    x: Tensor,
    faces: Sequence[Face],
    targets: Sequence[Target],
    lpips: nn.Module,
    settings: EngineSettings,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    codec: eot.JpegCodec | None = None,
) -> Outcome:
    """Optimize a bounded perturbation of ``x`` (1, 3, H, W) in [0, 1] against ``targets``.

    Stops early once every target is past its goal (by ``settings.goal_margin``) and both LPIPS
    budgets hold; returns the best step that kept the budgets (the clean photo itself, at worst).
    ``codec`` is the JPEG the result will be written with, if any: every step then measures the
    candidate as that file will hold it, so the budgets and goals hold for the file, not just for
    the float pixels.
    """
    check_image(x)
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    H, W = x.shape[-2:]
    need_detail = any(t.info.kind == "image" for t in targets)
    whole, face_geoms = plan_views((H, W), faces, settings, need_detail)
    geometries = [whole, *face_geoms]
    pert = make_perturbation(x, faces, settings, whole, face_geoms, need_detail)
    clean_views = [clean_view(x, g) for g in geometries]
    ev = Evaluator(clean_views, geometries, faces, targets, lpips, settings, goal_margin=settings.goal_margin)
    active = [t for t in targets if ev.references[t.name].shape[0] > 0]
    weights = {t.name: settings.weight_of(t.name) for t in active}

    generator = torch.Generator().manual_seed(settings.seed)
    params = list(pert.parameters())
    # The flow's learning rate is scaled to its limit, so one step moves pixels about as far at a
    # 2 % limit as at 0.6 % (at the full rate a wide warp overshoots the LPIPS budgets and oscillates).
    flow_lr = settings.learning_rate * min(1.0, 0.006 / max(settings.flow_limit, 1e-9))
    optimizer = torch.optim.Adam([{"params": [pert.flow], "lr": flow_lr},
                                  {"params": list(pert.noise), "lr": settings.learning_rate}]) if settings.mode == "tanh" else None
    # Adam's first steps move every parameter by the full learning rate at once, which overshoots
    # the LPIPS budgets and costs steps to come back; a short warm-up keeps early steps feasible.
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: min(1.0, (t + 1) / WARMUP_STEPS)) if optimizer else None
    pgd_step = 1 / 8  # of each pixel's bound
    # LPIPS budgets (whole photo, then each face) and what writing the file adds to each. Without an
    # image-level target nothing changes outside the faces, so the whole photo is not steered by a
    # (downscaled, blind) proxy: its native measure is taken on the result, and the face budgets,
    # measured at native resolution, are what keeps it low.
    whole_budget = settings.lpips_budget * (1 - settings.lpips_margin) if need_detail else math.inf
    budgets = [whole_budget] + [settings.face_lpips_budget * (1 - settings.lpips_margin)] * len(faces)
    excess = [0.0] * len(budgets)
    best = {"score": -math.inf, "state": None, "step": 0}
    history: list[dict] = []
    stopped_early = interrupted = False
    step_times: list[float] = []
    steps_run = 0
    last_judged = None
    for step in range(settings.steps + 1):
        if should_stop is not None and should_stop():
            interrupted = True
            break
        t0 = time.perf_counter()
        scene = ev.scene(pert.render_views(clean_views))
        draws = [eot.draw(generator) for _ in range(settings.eot_samples)]
        aligns = [eot.draw_alignment(generator, settings.align_jitter) for _ in range(settings.align_samples)]
        m = ev.measure(scene, draws, aligns, whole_lpips=need_detail, feature_dropout=settings.feature_dropout)
        lp_whole, lp_faces = m["lpips"], m["face_lpips"]
        lp_float = [float(lp_whole.detach()), *(float(v.detach()) for v in lp_faces)]
        # Steer by the float pixels, judge by the file: gradients through JPEG's rounding point the
        # wrong way (following them, a face's LPIPS rose step after step), so the written version
        # is only measured, and each LPIPS hinge's budget is lowered by what the JPEG adds.
        # Measuring it costs ~40 % of a step; what the JPEG adds changes slowly, so it is measured
        # every JUDGE_EVERY steps and whenever the float pixels say the run could stop.
        judged = m
        if settings.feature_dropout and codec is None:  # the ghosts' distances steer; only the model itself judges
            with torch.no_grad():
                judged = ev.measure(scene, draws, aligns, whole_lpips=need_detail)
        if codec is not None:
            could_stop = all(v <= b - e for v, b, e in zip(lp_float, budgets, excess)) and \
                all(bool(m["targets"][t.name][2].all()) for t in active)
            if step % JUDGE_EVERY == 0 or could_stop or step == settings.steps:
                with torch.no_grad():
                    judged = ev.measure(ev.written(scene, codec), draws, aligns, whole_lpips=need_detail)
                lp_judged = [float(judged["lpips"]), *(float(v) for v in judged["face_lpips"])]
                excess = [max(0.0, j - f) for j, f in zip(lp_judged, lp_float)]
            else:
                judged = None
        if judged is not None:  # a step that can be kept or end the run
            lp_now = [f + e for f, e in zip(lp_float, excess)]
            within = all(v <= b for v, b in zip(lp_now, budgets))
            done_all = all(bool(judged["targets"][t.name][2].all()) for t in active)
            score = _progress_score(judged, active, ev.goal_scale)
            history.append({"step": step, "lpips": lp_now[0], "face_lpips": lp_now[1:], "score": score})
            if within and score > best["score"]:
                best = {"score": score, "state": [p.detach().clone() for p in params], "step": step}
            if not active or (within and done_all) or step == settings.steps:
                stopped_early = bool(active) and step < settings.steps
                steps_run = step
                break
        if judged is not None:
            last_judged = judged
        # Between judgements a ghost's distances are noisier than the model's (and further from the
        # original), so which rows still need a push is taken from the last judgement.
        done = judged if judged is not None else (last_judged if settings.feature_dropout else m)
        # Only terms that can move enter the loss: a row past its goal or an LPIPS under its budget
        # has zero gradient, and leaving it out spares its model's backward pass.
        pushing = [t for t in active if not bool(done["targets"][t.name][2].all()) and weights[t.name] > 0]
        pushes = [identity_term(m["targets"][t.name][0], done["targets"][t.name][2]) * (settings.identity_weight * weights[t.name])
                  for t in pushing]
        terms = list(pushes) if settings.balance == "sum" else []
        terms += [settings.lpips_weight * hinge(v, b - e) for v, f, b, e in zip([lp_whole, *lp_faces], lp_float, budgets, excess)
                  if f > b - e]
        # The same face budgets through random views of each crop (shift, mirror, scale): a texture
        # tuned to fool LPIPS at one fixed alignment does not pass them all.
        for _ in range(settings.lpips_views):
            views = [draw_view(generator) for _ in lp_faces]
            for v, b, e in zip(ev.lpips_faces(scene, views), budgets[1:], excess[1:]):
                if float(v.detach()) > b - e:
                    terms.append(settings.lpips_weight * hinge(v, b - e))
        loss = sum(terms, torch.zeros((), device=x.device))
        if settings.vertical_weight:
            loss = loss + settings.vertical_weight * pert.vertical_flow_energy()
        if settings.blotch_weight and faces:
            loss = loss + settings.blotch_weight * pert.blotchiness(clean_views, settings.blotch_sigma)
        if settings.flow_smooth_weight and faces:
            loss = loss + settings.flow_smooth_weight * pert.flow_roughness()
        balanced = [] if settings.balance == "sum" else pushes
        if not loss.requires_grad and not balanced:  # nothing can move (only possible without a vertical penalty)
            steps_run = step
            break
        for p in params:
            p.grad = None
        # each balanced push's share: its ensemble weight, times its distance still to go for "shortfall"
        shares = [weights[t.name] * (_shortfall(done["targets"][t.name], t.goal * ev.goal_scale)
                                     if settings.balance == "shortfall" else 1.0) for t in pushing] if balanced else None
        _backward(loss, balanced, [scene.whole, *(v.image for v in scene.faces)], shares)
        if optimizer is not None:
            optimizer.step()
            warmup.step()
        else:
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p -= (pgd_step if p is not pert.flow else settings.learning_rate) * p.grad.sign()
            pert.project(clean_views)
        steps_run = step + 1
        step_times.append(time.perf_counter() - t0)
        if progress is not None:
            progress(step + 1, settings.steps)

    if best["state"] is not None:
        with torch.no_grad():
            for p, v in zip(params, best["state"]):
                p.copy_(v)
    image, applied = pert.render_full(x)
    final = evaluate(x, image, faces, targets, lpips, settings)
    return Outcome(
        image=image,
        steps=steps_run,
        targets=final.targets,
        lpips=final.lpips,
        lpips_resolution=final.lpips_resolution,
        face_lpips=final.face_lpips,
        max_delta=applied["max_delta"],
        max_flow_px=applied["max_flow_px"],
        seconds=time.perf_counter() - started,
        step_seconds=(sorted(step_times)[len(step_times) // 2] if step_times else 0.0),
        step_seconds_mean=(sum(step_times) / len(step_times) if step_times else 0.0),
        stopped_early=stopped_early,
        interrupted=interrupted,
        history=history,
        method=final.method,
    )


def _shortfall(row: tuple[Tensor, Tensor, Tensor], goal: float) -> float:
    """How far a target's rows still are from the goal, as a fraction of it (mean over rows not past it)."""
    _, dist, done = row
    short = (1 - dist.detach() / goal).clamp(min=0)[~done]
    return float(short.mean()) if short.numel() else 0.0


def _backward(loss: Tensor, pushes: Sequence[Tensor], rendered: Sequence[Tensor],
              shares: Sequence[float] | None = None) -> None:
    """Gradients of ``loss`` plus the identity ``pushes``, each push's gradient on the rendered views
    scaled to the mean norm of them all times its share of the mean of ``shares`` (the ensemble
    weights; for ``balance="shortfall"`` also each model's distance still to go); ``pushes`` is
    empty for ``balance="sum"``, whose pushes are already in ``loss``.

    Why: summed as they are, the model with the steepest gradient sets the direction of each step,
    and the shared quality budget is spent on it whether or not it is the one still matching (with
    four face models at panic, MobileFace was fooled on 10/10 pairs alone and on 1-5/10 in the
    ensemble). Scaling the pushes keeps the total push (and so its balance against the LPIPS hinges)
    what it was and decides only how it is shared. The scaling happens on the rendered views, so the
    render's backward pass still runs once.
    """
    rendered = [r for r in rendered if r.requires_grad]
    combined: list[Tensor | None] = [None] * len(rendered)
    if pushes:
        grads = [torch.autograd.grad(p, rendered, retain_graph=True, allow_unused=True) for p in pushes]
        norms = [math.sqrt(sum(float(g.pow(2).sum()) for g in gs if g is not None)) for gs in grads]
        mean = sum(norms) / len(norms)
        shares = list(shares) if shares is not None else [1.0] * len(pushes)
        mean_share = sum(shares) / len(shares)
        for gs, n, share in zip(grads, norms, shares):
            if n == 0 or share <= 0:
                continue
            scale = mean / n * share / mean_share
            for i, g in enumerate(gs):
                if g is not None:
                    combined[i] = g * scale if combined[i] is None else combined[i] + g * scale
    outputs = [loss] if loss.requires_grad else []
    grad_tensors = [torch.ones_like(loss)] if loss.requires_grad else []
    for r, g in zip(rendered, combined):
        if g is not None:
            outputs.append(r)
            grad_tensors.append(g)
    if outputs:
        torch.autograd.backward(outputs, grad_tensors)


@dataclass
class Evaluation:
    """A protected image measured against its original at the photo's own resolution."""

    targets: dict[str, TargetOutcome]
    lpips: float
    lpips_resolution: tuple[int, int]
    face_lpips: list[float]
    method: dict[str, str] = field(default_factory=dict)


#: Tile size of the whole-photo LPIPS at native resolution.
LPIPS_TILE = 1024


@torch.no_grad()
def evaluate(original: Tensor, protected: Tensor, faces: Sequence[Face], targets: Sequence[Target],
             lpips: nn.Module, settings: EngineSettings) -> Evaluation:
    """Measure ``protected`` against ``original`` (both (1, 3, H, W) in [0, 1], same size).

    Every quality figure is taken at the photo's own resolution: each face on its native crop (the
    chip's bounding box, never resized) and the whole photo in native tiles. These are the numbers
    that decide whether a photo is within budget and that the report prints.
    """
    if original.shape != protected.shape:
        raise ValueError(f"expected images of the same shape, got {tuple(original.shape)} and {tuple(protected.shape)}")
    H, W = original.shape[-2:]
    need_detail = any(t.info.kind == "image" for t in targets)
    whole, face_geoms = plan_views((H, W), faces, settings, need_detail, native=True)
    geometries = [whole, *face_geoms]
    ev = Evaluator([clean_view(original, g) for g in geometries], geometries, faces, targets, lpips, settings, native=True)
    before = ev.measure(ev.clean_scene, whole_lpips=False)
    after = ev.measure(ev.scene([clean_view(protected, g) for g in geometries]), whole_lpips=False)
    outcomes = {}
    for t in targets:
        sim0 = before["targets"][t.name][0]
        sim, dist, prot = after["targets"][t.name]
        outcomes[t.name] = TargetOutcome(
            cosine_before=[float(v) for v in sim0],
            cosine_after=[float(v) for v in sim],
            distance_after=[float(v) for v in dist],
            protected=[bool(v) for v in prot],
            goal=t.goal,
        )
    sizes = [f"{b[2] - b[0]}x{b[3] - b[1]}" for b in ev.crop_boxes]
    return Evaluation(
        targets=outcomes,
        lpips=tiled_lpips(lpips, original, protected, LPIPS_TILE),
        lpips_resolution=(int(H), int(W)),
        face_lpips=[float(v) for v in after["face_lpips"]],
        method={
            "lpips": f"LPIPS v0.1 AlexNet on the whole photo at its own resolution ({W}x{H}), "
                     f"in tiles of at most {LPIPS_TILE} px, area-weighted mean",
            "face_lpips": "LPIPS v0.1 AlexNet on each face's native crop (the aligned chip's bounding box, "
                          f"never resized): {', '.join(sizes) or 'no face'} px",
            "ssim_psnr": "whole photo at its own resolution",
        },
    )


def _progress_score(m: dict, active: Sequence[Target], goal_scale: float = 1.0) -> float:
    """How far the least-protected row is towards its goal (1.0 = at the goal including the stop
    margin ``goal_scale``), plus a small tiebreak."""
    ratios = []
    for t in active:
        _, dist, _ = m["targets"][t.name]
        if dist.numel():
            ratios.append((dist.detach() / (t.goal * goal_scale)).clamp(max=1.0))
    if not ratios:
        return 0.0
    allr = torch.cat(ratios)
    return float(allr.min()) + 1e-3 * float(allr.mean())
