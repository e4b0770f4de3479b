"""The verdict on a measured copy (``ghostmesh_daemon.verdict``): each condition that makes a copy
weak, the ones that do not, and how the reasons read. Pure: report entries built by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ghostmesh_daemon.cli.protect import summary_line
from ghostmesh_daemon.engine import settings_for
from ghostmesh_daemon.report import ReportEntry, TargetResult
from ghostmesh_daemon.verdict import apply_verdict, weak_reasons

STEALTH = settings_for("stealth", face_lpips_budget=0.03, lpips_budget=0.05)  # budgets named: the tests read them


def target(name: str, distances: list[float], goal: float = 1.0, kind: str = "face",
           threshold: float | None = None) -> TargetResult:
    return TargetResult(name=name, cosine_before=[1.0] * len(distances), cosine_after=[0.0] * len(distances),
                        distance_after=distances, goal=goal, protected=[d >= goal for d in distances], kind=kind,
                        threshold=threshold)


def entry(*results: TargetResult, face_lpips=(0.02,), lpips=0.01, robustness=None) -> ReportEntry:
    return ReportEntry(input="/p/IMG_1.jpg", output=None, status="ok", targets=[r.name for r in results],
                       target_results={r.name: r for r in results}, faces=len(face_lpips),
                       face_lpips=list(face_lpips), lpips=lpips, robustness=robustness)


def upload(*distances: float | None) -> dict:
    return {"transform": "JPEG 75, long side 1080 px", "dlib_detected_distance": list(distances),
            "dlib_same_person": [d is not None and d < 0.6 for d in distances],
            "weak": any(d is not None and d < 0.6 for d in distances)}


def test_a_copy_within_every_goal_and_budget_is_ok():
    e = entry(target("face", [1.02]), target("mobileface", [1.1]), robustness=upload(0.8))
    assert weak_reasons(e, STEALTH) == []
    assert apply_verdict(e, STEALTH).status == "ok" and e.weak is False and e.reason is None


def test_a_target_not_reached_names_the_target_the_face_and_the_distance():
    e = entry(target("face", [1.05, 0.4]), target("mobileface", [0.71, 0.2]), face_lpips=(0.02, 0.02))
    assert weak_reasons(e, STEALTH) == [
        "face 2 not protected against face (distance 0.40 of goal 1.00)",
        "faces 1 and 2 not protected against mobileface (distances 0.71, 0.20 of goal 1.00)",
    ]
    apply_verdict(e, STEALTH)
    assert e.status == "weak" and e.weak is True
    assert e.reason == ("face 2 not protected against face (distance 0.40 of goal 1.00); "
                        "faces 1 and 2 not protected against mobileface (distances 0.71, 0.20 of goal 1.00)")


def test_a_face_model_is_judged_by_its_own_threshold_as_written_and_after_the_upload():
    """Short of the goal but past the model's match threshold, also after the upload: not weak."""
    r = target("face", [0.72, 0.68], threshold=0.6)
    uploaded = {**upload(0.7, 0.7), "targets": {"face": {"distance_after": [0.66, 0.63]}}}
    assert weak_reasons(entry(r, face_lpips=(0.02, 0.02), robustness=uploaded), STEALTH) == []
    # The upload pulls face 2 back under the threshold: weak, both figures named.
    uploaded["targets"]["face"]["distance_after"] = [0.66, 0.55]
    assert weak_reasons(entry(r, face_lpips=(0.02, 0.02), robustness=uploaded), STEALTH) == [
        "face 2 still matched by face (distance 0.68, 0.55 after an upload; below 0.6 it calls them the same person)"]
    # Under the threshold as written (no upload check ran): weak.
    r = target("mobileface", [0.9, 0.5], threshold=0.775)
    assert weak_reasons(entry(r, face_lpips=(0.02, 0.02)), STEALTH) == [
        "face 2 still matched by mobileface (distance 0.50; below 0.775 it calls them the same person)"]


def test_the_image_target_reads_as_the_photo_and_small_goals_stay_readable():
    e = entry(target("siglip", [0.21], goal=0.5, kind="image"), target("mobilefacenet", [0.0004], goal=0.001))
    assert weak_reasons(e, STEALTH) == [
        "the photo not protected against siglip (distance 0.21 of goal 0.50)",
        "face 1 not protected against mobilefacenet (distance 0.0004 of goal 0.001)",
    ]


def test_a_target_with_weight_0_is_measured_not_judged():
    settings = replace(STEALTH, target_weights=(("mobileface", 0.0),))
    e = entry(target("face", [1.01]), target("mobileface", [0.1]))
    assert weak_reasons(e, settings) == []


def test_every_weight_0_means_nothing_was_protected():
    settings = replace(STEALTH, target_weights=(("face", 0.0),))
    assert weak_reasons(entry(target("face", [0.05])), settings) == ["every target's weight is 0: nothing was protected"]


@pytest.mark.parametrize("face_lpips, lpips, expected", [
    ((0.031,), 0.01, ["face 1 visibly changed (LPIPS 0.0310 over the budget 0.03)"]),
    ((0.02, 0.035, 0.04), 0.01, ["faces 2 and 3 visibly changed (LPIPS 0.0350, 0.0400 over the budget 0.03)"]),
    ((0.02,), 0.051, ["the photo visibly changed (LPIPS 0.0510 over the budget 0.05)"]),
    ((0.03,), 0.05, []),  # at the budget is within it
])
def test_a_perceptual_figure_over_its_budget_is_weak(face_lpips, lpips, expected):
    e = entry(target("face", [1.1] * len(face_lpips)), face_lpips=face_lpips, lpips=lpips)
    assert weak_reasons(e, STEALTH) == expected


def test_budgets_are_the_settings_own():
    e = entry(target("face", [1.1]), face_lpips=(0.045,))
    assert weak_reasons(e, settings_for("stealth", face_lpips_budget=0.05, lpips_budget=0.05)) == []
    assert weak_reasons(e, STEALTH) != []


def test_dlib_still_matching_after_an_upload_is_weak_when_dlib_is_a_target():
    e = entry(target("face", [1.02]), robustness=upload(0.45))
    assert weak_reasons(e, STEALTH) == [
        "after an upload-like recompression (JPEG 75, long side 1080 px) dlib still matches face 1 to the original "
        "(distance 0.45; below 0.6 dlib calls it the same person)"
    ]
    # dlib held out (not a target): its match after an upload is a measurement, not a promise broken
    held_out = entry(target("mobileface", [1.1]), robustness=upload(0.45))
    assert weak_reasons(held_out, STEALTH) == []
    two = entry(target("face", [1.02, 1.03, 1.04]), face_lpips=(0.02,) * 3, robustness=upload(0.7, 0.18, 0.19))
    assert weak_reasons(two, STEALTH)[0].endswith("dlib still matches faces 2 and 3 to the original "
                                                  "(distances 0.18, 0.19; below 0.6 dlib calls it the same person)")
    # a face dlib no longer finds after the upload is not a match
    assert weak_reasons(entry(target("face", [1.02]), robustness=upload(None)), STEALTH) == []
    # dlib's port already names the face as still matched: its pipeline's verdict is not repeated
    port = entry(target("face", [0.3], threshold=0.6), robustness=upload(0.31))
    assert weak_reasons(port, STEALTH) == ["face 1 still matched by face (distance 0.30; below 0.6 it calls them the same person)"]


def test_only_an_ok_entry_is_judged():
    failed = ReportEntry.failed("/p/x.jpg", "not an image")
    assert apply_verdict(failed, STEALTH).status == "failed" and failed.reason == "not an image"


def test_summary_lines_for_weak_say_what_happened_to_the_file():
    e = apply_verdict(entry(target("face", [0.3])), STEALTH)
    assert summary_line(e) == ("/p/IMG_1.jpg: weak: face 1 not protected against face (distance 0.30 of goal 1.00) "
                               "(not written; --keep-weak writes it anyway)")
    assert summary_line(e, in_place=True).endswith("(left unchanged; --keep-weak replaces it anyway)")
    e.output = "/p/IMG_1.ghost.jpg"
    assert summary_line(e) == ("/p/IMG_1.jpg -> /p/IMG_1.ghost.jpg: weak (kept at your request): face 1 not "
                               "protected against face (distance 0.30 of goal 1.00)")
