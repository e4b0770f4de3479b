"""Optimizer settings and the two presets. Plain data: the CLI, the config file and the plugins
all end up here, so every limit a report states comes from one place."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal, get_args

#: Most re-aligned copies of each face per step (each costs a face model's forward and backward pass).
MAX_ALIGN_SAMPLES = 8

Mode = Literal["tanh", "pgd"]
Preset = Literal["stealth", "panic"]
Balance = Literal["sum", "gradnorm", "shortfall"]
BALANCES: tuple[str, ...] = get_args(Balance)


@dataclass(frozen=True)
class EngineSettings:
    """Everything that changes what the optimizer writes.

    The noise is bounded per pixel by what eyes forgive (``engine/perception.py``): luma by the
    original's just-noticeable difference times ``jnd_scale``, capped at ``noise_limit`` (a fraction
    of the [0, 1] range), chroma by ``chroma_ratio`` of that. ``flow_limit`` is the largest warp as a
    fraction of each face's size (its aligned chip's side), applied only inside the face.
    ``lpips_budget`` bounds the whole photo and ``face_lpips_budget`` each face, both measured at the
    photo's own resolution for every decision and report (a whole-photo budget alone lets a face be
    visibly reshaped).
    """

    targets: tuple[str, ...] = ("auto",)
    #: Weight of each target's identity term in the ensemble, as (name, weight) pairs; unnamed
    #: targets weigh 1. A weight of 0 keeps a target measured and reported but not pushed.
    target_weights: tuple[tuple[str, float], ...] = ()
    #: How the targets' pushes combine: "sum" (as weighted), "gradnorm" (each scaled to the same
    #: gradient norm each step, so the steepest model does not set every step's direction) or
    #: "shortfall" (scaled to that norm times how far the model still is from its goal).
    balance: Balance = "sum"
    mode: Mode = "tanh"
    preset: Preset = "stealth"
    steps: int = 120
    noise_limit: float = 0.03
    flow_limit: float = 0.006
    jnd_scale: float = 1.0
    chroma_ratio: float = 0.25
    #: Share of the JND left where there is no texture to mask the perturbation (smooth skin).
    jnd_flat: float = 1.0
    #: Keep the noise grain-like: drop what is coarser than this many pixels (Gaussian sigma) before
    #: bounding it. Coherent streaks of the same amplitude are what people saw on smooth skin.
    grain: float = 0.0
    #: Weight of the penalty on the noise's coarse part (blurred by ``blotch_sigma`` photo pixels):
    #: under a per-pixel bound alone the optimizer fills smooth skin with same-signed patches.
    blotch_weight: float = 0.0
    blotch_sigma: float = 2.0
    #: Noise basis: 0 = free pixels under the JND bound; > 0 = the noise only re-weights the
    #: original's own luma detail (``detail_bands`` bands, finest first), each band's contrast lowered
    #: by at most this fraction and raised by at most ``detail_boost``, with gains that vary no faster
    #: than ``detail_smooth`` times each band's own scale (a local retouch: a gain that varies faster
    #: than its band draws new texture). Free noise drew bands and mottling on smooth skin; this
    #: cannot draw texture where the photo has none. Still within the JND bound.
    detail_gain: float = 0.0
    detail_bands: int = 4
    #: Multiplies the bands' scales (1, 2, 4, 8 px): coarser bands reshape shading, the scale a
    #: recognizer's 112-160 px crop of a large face sees.
    detail_scale: float = 1.0
    detail_smooth: float = 1.5
    #: Largest relative increase of a detail band (raised fine detail reads as aged skin).
    detail_boost: float = 0.3
    #: Detail basis: luma grain on top, at this share of the JND's texture term (none on smooth skin).
    detail_pixels: float = 0.5
    #: The share of the noise's and the warp's bounds withheld around the eyes (up to about an eye's
    #: width from each eye's centre): lowered whites and catch-lights and lids moved by the warp made
    #: eyes look smaller and a face older and tired.
    eye_guard: float = 0.0
    lpips_budget: float = 0.05
    face_lpips_budget: float = 0.03
    vertical_weight: float = 30.0
    #: stAdv-style smoothness of the warp's control grid (neighbours that disagree make lines wavy).
    flow_smooth_weight: float = 10.0
    #: Random views (shift, mirror, scale) of each face crop whose LPIPS must also hold the budget
    #: each step (E-LPIPS): one fixed view is a metric the optimizer learns to fool.
    lpips_views: int = 1
    identity_weight: float = 1.0
    lpips_weight: float = 5.0
    learning_rate: float = 0.2
    flow_grid: int = 32
    work_size: int = 768
    whole_proxy_size: int = 256
    lpips_size: int = 512
    face_view_size: int = 1536
    #: 0: face crops are compared (LPIPS) at their own resolution, as every decision and report is.
    #: A long side here compares a downscaled proxy while optimizing instead (cheaper, blind to the
    #: texture people see at 100 %: a face at 0.03 on a 256 px crop measured 0.13-0.26 at native size).
    face_lpips_size: int = 0
    eot_samples: int = 0
    #: Input diversity for face targets: each step also embeds each face re-aligned this many times
    #: at random (scale, rotation and shift within ``align_jitter``, mirrored half the time), so the
    #: perturbation cannot rely on one model's exact crop. A jitter of 0.15 moved the held-out
    #: MobileFace furthest of 0.08, 0.15 and 0.25 (0.25 made dlib itself hard to reach; README).
    align_samples: int = 0
    align_jitter: float = 0.15
    #: Surrogate augmentation (ghost networks, ``engine/ghosts.py``): while optimizing, each unit of every
    #: convolution's output in the target models is dropped with this probability, afresh each step, so
    #: the perturbation cannot lean on one network's exact features. The models judge without it. At 0.01
    #: a clean face's own distance under the erosion is about a fifth of each model's threshold. Opt-in:
    #: at 0.02 on panic it left the held-out rate where it was (README, "ghost networks") and costs time.
    feature_dropout: float = 0.0
    #: The optimizer stops once each distance is this fraction past its goal: the full-resolution
    #: render and the 8-bit write each move a distance by up to about 1 % (measured on the shared
    #: faces), and the report judges the written file against the goal itself.
    goal_margin: float = 0.01
    #: The optimizer holds each LPIPS this fraction under its budget: its model of the JPEG writer
    #: (``eot.JpegCodec``) runs about 0.001 below libjpeg's face LPIPS at 512 px.
    lpips_margin: float = 0.05
    face_goal: float | None = None
    image_goal: float | None = None
    seed: int = 0
    device: str = "auto"
    #: Hugging Face id or local folder of the SigLIP vision model.
    siglip_model: str = "google/siglip-base-patch16-384"

    def __post_init__(self) -> None:
        if not 0.0 <= self.feature_dropout < 1.0:
            raise ValueError(f"feature_dropout must be in [0, 1), got {self.feature_dropout!r}")
        if self.balance not in BALANCES:
            raise ValueError(f"balance must be one of {', '.join(map(repr, BALANCES))}, got {self.balance!r}")
        for name, weight in self.target_weights:
            if not (isinstance(weight, (int, float)) and weight >= 0 and math.isfinite(weight)):
                raise ValueError(f"target weight for {name!r} must be a number >= 0, got {weight!r}")

    def weight_of(self, target: str) -> float:
        return dict(self.target_weights).get(target, 1.0)

    def limits(self) -> dict[str, float]:
        return {
            "noise_limit": self.noise_limit,
            "jnd_scale": self.jnd_scale,
            "chroma_ratio": self.chroma_ratio,
            "flow_limit": self.flow_limit,
            "lpips_budget": self.lpips_budget,
            "face_lpips_budget": self.face_lpips_budget,
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        d["target_weights"] = dict(self.target_weights)
        return d


#: Preset defaults, judged at 100 % (native resolution). ``stealth`` (default): a person comparing
#: before and after side by side at 100 % should not tell which is which, and each face stays as close
#: to its original as uniform +-4/255 noise by measures the engine does not optimize (MS-SSIM,
#: HaarPSI, LPIPS-VGG): luma noise within 0.7 of a JND (at most 0.03) where texture masks it and half
#: of that on smooth skin (at a full JND MobileFace's pattern showed as horizontal streaks on smooth,
#: bright skin), chroma within a quarter of the flat-region JND, and no warp (a warp of 0.6 % of the
#: face, about 2 px, moved edges enough that HaarPSI put every face further than the noise reference;
#: at a full JND without the warp MS-SSIM and HaarPSI still did on alex_lacamoire; at 0.7 of one 10 of
#: the 11 shared faces are within the reference on at least two of them), native face LPIPS <= 0.03.
#: ``panic``: stronger and allowed to be visible: three JNDs where texture masks them (at most 0.05)
#: but only 1.5 on smooth skin (an optimized pattern forms streaks there), chroma still a quarter of
#: the flat-region JND (more turned eyes and brows purple), a 1.5 % warp with the vertical penalty
#: (without it eyes drooped), native face LPIPS <= 0.06, up to 300 steps, two re-aligned copies
#: of each face per step (input diversity), which moved the held-out MobileFace furthest, and the
#: pushes shared by each model's distance still to go ("shortfall": with the four models, MobileFace
#: unmatched on 4/10 pairs instead of 1/10, SFace 10/10 instead of 9/10). Stealth reaches no model's
#: threshold either way, so it keeps the plain sum. Panic's noise is the detail basis (``detail_gain``):
#: free noise at panic's bound drew wavy bands and mottled, aged skin on most faces, which the issue's
#: "looks like a natural photo" rules out; re-weighting the photo's own detail looks like a retouch
#: and, with its grain at the full texture JND (``detail_pixels`` 1), stops dlib's own pipeline on all
#: 29 test pairs after an upload (at half of it the 150 px face of kit_harington/john1 stayed 0.57
#: from another photo of him, at the full 0.72), but MobileFace, FaceNet and SFace far less.
#: Panic leaves the eyes as they are (``eye_guard``): with the eyes' whites and catch-lights lowered
#: and the lids moved by the warp, biden.jpg's eyes looked smaller and the face older and tired.
#: Without the eyes dlib's own pipeline still matched 2 of the 29 pairs (obama3, 0.57 and 0.59), so
#: panic weighs dlib 3 (``target_weights``; at 2 those pairs were 0.61 and 0.63 from each other, at 3
#: 0.62 and 0.65): no setting reaches MobileFace or SFace within the look, dlib it can.
PRESETS: dict[str, dict] = {
    "stealth": {"noise_limit": 0.03, "jnd_scale": 0.7, "jnd_flat": 0.5, "chroma_ratio": 0.25, "flow_limit": 0.0,
                "vertical_weight": 30.0, "face_lpips_budget": 0.03, "steps": 120, "align_samples": 0, "balance": "sum",
                "detail_gain": 0.0},
    "panic": {"noise_limit": 0.05, "jnd_scale": 3.0, "jnd_flat": 0.5, "chroma_ratio": 0.25, "flow_limit": 0.015,
              "vertical_weight": 30.0, "face_lpips_budget": 0.06, "steps": 300, "align_samples": 2, "balance": "shortfall",
              "detail_gain": 0.8, "detail_pixels": 1.0, "eye_guard": 1.0, "target_weights": (("face", 3.0),)},
}


def preset_values(name: str, quote: bool = False) -> str | None:
    """``0.03 for stealth, 0.05 for panic`` for a setting every preset sets (None otherwise), for help
    texts and the config file's comments; ``quote`` puts text values in quotes, as TOML writes them."""
    if not all(name in values for values in PRESETS.values()):
        return None
    shown = lambda v: f"{v:g}" if isinstance(v, (int, float)) else (f'"{v}"' if quote else v)  # noqa: E731
    return ", ".join(f"{shown(values[name])} for {preset}" for preset, values in PRESETS.items())


def preset_weights() -> str:
    """``panic weighs face 3`` for every preset that sets target weights, for help texts."""
    return "; ".join(f"{name} weighs " + ", ".join(f"{t} {w:g}" for t, w in values["target_weights"])
                     for name, values in PRESETS.items() if values.get("target_weights"))


def parse_target_weights(items: list[str] | tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    """``["mobileface=0.5", "face=2"]`` -> ``(("mobileface", 0.5), ("face", 2.0))``; raises ValueError."""
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not sep or not name.strip() or not (weight >= 0 and math.isfinite(weight)):
            raise ValueError(f"expected NAME=WEIGHT with a weight >= 0 (e.g. mobileface=0.5), got {item!r}")
        pairs.append((name.strip(), weight))
    return tuple(pairs)


def settings_for(preset: Preset = "stealth", **overrides) -> EngineSettings:
    """Settings for ``preset`` with explicit ``overrides`` (``None`` values mean "preset default")."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    given = {k: v for k, v in overrides.items() if v is not None}
    values = {**PRESETS[preset], **given}
    # A preset's weights are defaults per target: the user's weights replace them target by target.
    values["target_weights"] = tuple({**dict(PRESETS[preset].get("target_weights", ())),
                                      **dict(given.get("target_weights", ()))}.items())
    return replace(EngineSettings(preset=preset), **values)
