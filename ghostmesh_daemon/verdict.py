"""The verdict on a measured copy: protected within its budgets, or weak, and why.

One pure function used by ``protect``, ``verify`` and the daemon, so every adapter calls the same
copy weak for the same reasons. It reads only a report entry measured on the file as written (and
decoded again) and the settings the copy was made with; it never measures anything itself.

A copy is weak when

* a face target that is pushed (weight > 0) still matches a face to the original by its own rule: its
  distance is under the model's match threshold on the copy as written, or after the upload-like
  recompression the report simulates (``robustness["targets"]``). The goal each target is pushed to lies
  past that threshold by a margin for the upload; falling short of the goal while the model no longer
  matches, even after the upload, is not weak (at an exact goal of 1.0 ten of eleven panic copies read
  weak while all 29 same-person pairs were unmatched after JPEG 75 + 1080 px);
* an image target (or one without a threshold) that is pushed did not reach its goal;
* a perceptual figure is over its budget: a face's LPIPS over ``face_lpips_budget``, or the whole
  photo's over ``lpips_budget``;
* dlib's own pipeline still matches a face after an upload-like JPEG 75 + 1080 px resize
  (``robustness["weak"]``), when dlib's face model (``face``) is one of the pushed targets: a
  held-out model that was not optimized against is a measurement, not a promise;
* no target is pushed at all (every weight is 0): nothing was protected.
"""

from __future__ import annotations

from typing import Any

from .engine.settings import EngineSettings
from .report import ReportEntry, TargetResult

#: dlib's target name (its match verdict after an upload is the report's robustness check).
DLIB_TARGET = "face"
#: dlib calls two faces the same person below this distance (``dlib_check.MATCH_THRESHOLD``).
MATCH_THRESHOLD = 0.6


def _num(value: float) -> str:
    """Two decimals, or three significant digits for small numbers (a goal of 0.001 stays readable)."""
    return f"{value:.2f}" if abs(value) >= 0.1 or value == 0 else f"{value:.3g}"


def _rows(kind: str, indices: list[int]) -> str:
    if kind == "image":
        return "the photo"
    numbers = [str(i + 1) for i in indices]
    if len(numbers) == 1:
        return f"face {numbers[0]}"
    return f"faces {', '.join(numbers[:-1])} and {numbers[-1]}"


def _pushed(entry: ReportEntry, settings: EngineSettings) -> list[str]:
    names = list(entry.targets) or list(entry.target_results)
    return [n for n in names if settings.weight_of(n) > 0]


def weak_reasons(entry: ReportEntry, settings: EngineSettings) -> list[str]:
    """Why ``entry`` (measured on the written copy) is not protected within ``settings``' budgets;
    empty when it is."""
    reasons: list[str] = []
    pushed = _pushed(entry, settings)
    if entry.targets and not pushed:
        reasons.append("every target's weight is 0: nothing was protected")
    uploaded = (entry.robustness or {}).get("targets") or {}
    dlib_named = False  # dlib's port already said its faces still match: its own pipeline need not say it again
    for name, r in entry.target_results.items():
        if settings.weight_of(name) <= 0:
            continue
        reason = _still_matched(r, uploaded.get(name)) if r.kind == "face" and r.threshold is not None else _short_of_goal(r)
        if reason:
            reasons.append(reason)
            dlib_named = dlib_named or name == DLIB_TARGET
    over = [i for i, v in enumerate(entry.face_lpips) if v is not None and v > settings.face_lpips_budget]
    if over:
        values = ", ".join(f"{entry.face_lpips[i]:.4f}" for i in over)
        reasons.append(f"{_rows('face', over)} visibly changed (LPIPS {values} over the budget {settings.face_lpips_budget:g})")
    if entry.lpips is not None and entry.lpips > settings.lpips_budget:
        reasons.append(f"the photo visibly changed (LPIPS {entry.lpips:.4f} over the budget {settings.lpips_budget:g})")
    if not dlib_named:
        reasons.extend(_upload_reasons(entry.robustness, pushed))
    return reasons


def _short_of_goal(r: TargetResult) -> str | None:
    missed = [i for i, ok in enumerate(r.protected) if not ok]
    if not missed:
        return None
    distances = ", ".join(_num(r.distance_after[i]) for i in missed if i < len(r.distance_after))
    word = "distances" if len(missed) > 1 else "distance"
    return f"{_rows(r.kind, missed)} not protected against {r.name} ({word} {distances} of goal {_num(r.goal)})"


def _still_matched(r: TargetResult, uploaded: dict[str, Any] | None) -> str | None:
    """Faces ``r``'s model still calls the original person, as written or after the upload-like copy."""
    after = list((uploaded or {}).get("distance_after") or [])
    missed = [i for i, d in enumerate(r.distance_after)
              if d < r.threshold or (i < len(after) and after[i] is not None and after[i] < r.threshold)]
    if not missed:
        return None

    def shown(i: int) -> str:
        d = _num(r.distance_after[i])
        return f"{d}, {_num(after[i])} after an upload" if i < len(after) and after[i] is not None else d

    word = "distances" if len(missed) > 1 else "distance"
    return (f"{_rows('face', missed)} still matched by {r.name} ({word} {'; '.join(shown(i) for i in missed)}; "
            f"below {r.threshold:g} it calls them the same person)")


def _upload_reasons(robustness: dict[str, Any] | None, pushed: list[str]) -> list[str]:
    if not robustness or not robustness.get("weak") or DLIB_TARGET not in pushed:
        return []
    distances = robustness.get("dlib_detected_distance") or []
    same = robustness.get("dlib_same_person") or []
    matched = [i for i, s in enumerate(same) if s]
    after = "after an upload-like recompression"
    if robustness.get("transform"):
        after += f" ({robustness['transform']})"
    if not matched:
        return [f"{after} dlib still matches a face to the original"]
    shown = ", ".join(_num(distances[i]) for i in matched if i < len(distances) and distances[i] is not None)
    word = "distances" if len(matched) > 1 else "distance"
    return [f"{after} dlib still matches {_rows('face', matched)} to the original "
            f"({word} {shown}; below {MATCH_THRESHOLD:g} dlib calls it the same person)"]


def apply_verdict(entry: ReportEntry, settings: EngineSettings) -> ReportEntry:
    """Set ``entry.status``/``reason``/``weak`` from :func:`weak_reasons` (an ``ok`` entry only)."""
    if entry.status != "ok":
        return entry
    reasons = weak_reasons(entry, settings)
    entry.weak = bool(reasons)
    if reasons:
        entry.status = "weak"
        entry.reason = "; ".join(reasons)
    return entry
