"""Engine options shared by ``protect`` and ``run``, defined once so both commands spell and check
them the same way, and so a value given on the command line always beats the config file.

Every option defaults to ``None`` ("not given"): only what the user typed overrides the preset or
the config file.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Mapping

from ..config import unit_number
from ..engine.settings import (BALANCES, MAX_ALIGN_SAMPLES, PRESETS, EngineSettings, parse_target_weights, preset_values,
                               preset_weights, settings_for)
from ..errors import UsageError

#: EngineSettings fields that have a command-line option (dest names match the field names).
ENGINE_OPTION_FIELDS = (
    "targets",
    "target_weights",
    "mode",
    "preset",
    "steps",
    "noise_limit",
    "flow_limit",
    "lpips_budget",
    "align_samples",
    "balance",
    "detail_gain",
    "device",
    "seed",
)

DEVICES = ("auto", "cpu", "cuda", "mps")


def _targets(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of target names, e.g. siglip,face")
    return names


def _target_weights(text: str) -> tuple[tuple[str, float], ...]:
    try:
        return parse_target_weights([t.strip() for t in text.split(",") if t.strip()])
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _whole_number(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number within [lo, hi]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected at least {lo}, got {value}" if hi is None else f"expected {lo} to {hi}, got {value}")
        return value

    return parse


_positive_int = _whole_number(1)


def _unit_number(zero: bool, one: bool) -> Callable[[str], float]:
    """An argparse type: the config file's :func:`~ghostmesh_daemon.config.unit_number` rule on a typed value."""
    check = unit_number(zero=zero, one=one)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            return check(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


_fraction = _unit_number(zero=False, one=False)
_share = _unit_number(zero=True, one=True)
#: A warp limit of 0 turns the warp off (stealth's default: a warp of about 2 px moved edges enough
#: that MS-SSIM and HaarPSI put faces further from their originals than +-4/255 noise).
_warp = _unit_number(zero=True, one=False)


def _device(text: str) -> str:
    base = text.split(":", 1)[0]
    if base not in DEVICES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(DEVICES)} (or cuda:N), got {text!r}")
    return text


def _preset_default(name: str) -> str:
    """``the preset's: 0.03 for stealth, 0.05 for panic`` or the one default, for help texts."""
    per_preset = preset_values(name)
    if per_preset is not None:
        return f"the preset's, {per_preset}"
    return f"{getattr(EngineSettings(), name):g}"


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Add the engine options (all defaulting to ``None``: "keep the preset's or the file's value")."""
    g = parser.add_argument_group("engine options")
    g.add_argument("--targets", type=_targets, metavar="A,B", help="encoders to protect against (default: auto)")
    g.add_argument("--target-weights", type=_target_weights, metavar="A=W,B=W",
                   help=f"weight of each target in the ensemble (default: 1 each, or the preset's: {preset_weights()}), "
                        "e.g. mobileface=0.5")
    g.add_argument("--mode", choices=("tanh", "pgd"), help="how the noise is bounded (default: tanh)")
    g.add_argument("--preset", choices=tuple(PRESETS), help="stealth (default) or panic (stronger, more visible)")
    g.add_argument("--steps", type=_positive_int, metavar="N", help="optimizer steps (default: the preset's)")
    g.add_argument("--noise-limit", type=_fraction, metavar="F",
                   help=f"cap on the per-pixel luma change (the JND bound is clamped to it), fraction of full scale (default: {_preset_default('noise_limit')})")
    g.add_argument("--flow-limit", type=_warp, metavar="F",
                   help=f"max warp, fraction of each face's size, 0 for none (default: {_preset_default('flow_limit')})")
    g.add_argument("--lpips-budget", type=_fraction, metavar="F",
                   help=f"perceptual budget for the whole photo (default: {_preset_default('lpips_budget')})")
    g.add_argument("--align-samples", type=_whole_number(0, MAX_ALIGN_SAMPLES), metavar="N",
                   help="re-aligned copies of each face the face models also see each step (default: the preset's, 0 or 2)")
    g.add_argument("--balance", choices=BALANCES,
                   help="how the face models share each step: sum, gradnorm (equal pushes) or shortfall (pushes by "
                        f"how far each model still is from its goal) (default: {_preset_default('balance')})")
    g.add_argument("--detail-gain", type=_share, metavar="F",
                   help="0: the cloak is free noise; above 0 it only re-weights the photo's own detail, lowering its "
                        f"contrast by at most this fraction (a local retouch) (default: {_preset_default('detail_gain')})")
    g.add_argument("--device", type=_device, metavar="DEV", help="auto, cpu, cuda[:N] or mps (default: auto)")
    g.add_argument("--seed", type=int, metavar="N", help="random seed (default: 0)")


def engine_overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The engine values the user actually gave on the command line."""
    return {f: getattr(args, f) for f in ENGINE_OPTION_FIELDS if getattr(args, f, None) is not None}


def engine_settings_from_args(
    args: argparse.Namespace, base: Mapping[str, Any] | None = None
) -> EngineSettings:
    """EngineSettings from ``base`` (e.g. the config file's ``[engine]`` values) overridden by the
    command line. The preset is applied first, so explicit values (file or flags) win over it."""
    values: dict[str, Any] = {**(base or {}), **engine_overrides_from_args(args)}
    preset = values.pop("preset", None) or "stealth"
    if "targets" in values:
        values["targets"] = tuple(values["targets"])
    try:
        return settings_for(preset, **values)
    except (TypeError, ValueError) as e:
        raise UsageError(f"ghostmesh: invalid engine options: {e}") from None
