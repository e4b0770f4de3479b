"""The ``ghostmesh protect`` / ``verify`` / ``models`` contract: exit codes, report fields, originals untouched.

These run the real CLI entry (``main(argv, env)``) with the real models on real photos; few steps keep
them quick. Engine quality is measured by the benchmarks, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import piexif
import pytest
from PIL import Image

from ghostmesh_daemon.cli.env import ExitStatus
from ghostmesh_daemon.engine import settings_for

from conftest import run_cli, sha, shared_data

FAST = ["--steps", "2", "--targets", "face"]


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder with a small face photo carrying camera EXIF, a photo with no face, and a corrupt file."""
    folder = tmp_path / "in"
    folder.mkdir()
    im = Image.open(shared_data("faces", "obama", "obama.jpg"))
    im.thumbnail((480, 480))
    exif = piexif.load(str(shared_data("exif", "jpg", "Canon_40D.jpg")))
    exif["thumbnail"] = None
    exif["1st"] = {}
    im.save(folder / "face.jpg", quality=90, exif=piexif.dump(exif))
    Image.new("RGB", (200, 150), (90, 140, 200)).save(folder / "sky.jpg", quality=90)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return folder


def test_protect_writes_copies_and_a_full_report(photos, tmp_path):
    before = {p.name: sha(p) for p in photos.iterdir()}
    report = tmp_path / "report.json"
    # Six steps cannot protect a face (the copy is weak); --keep-weak writes it anyway so this test
    # can check the report's fields and the metadata on a written copy. (Within stealth's bound the
    # first few steps move no distance past the clean photo's, and the clean state would be kept.)
    code, out, err = run_cli("protect", str(photos / "face.jpg"), str(photos / "sky.jpg"), "--report", str(report),
                             "--keep-weak", *FAST, "--steps", "6")
    assert code == ExitStatus.ERROR, err  # a weak photo, even kept, is not a success
    assert {p.name: sha(p) for p in photos.iterdir() if p.name in before} == before  # originals untouched
    assert (photos / "face.ghost.jpg").exists() and not (photos / "sky.ghost.jpg").exists()
    entries = json.loads(report.read_text())
    assert [e["status"] for e in entries] == ["weak", "skipped"]
    face = entries[0]
    for key in ("input", "output", "status", "reason", "targets", "target_results", "face_dlib_distance", "lpips",
                "lpips_resolution", "ssim", "psnr", "max_delta", "max_flow_px", "steps", "seconds", "device",
                "engine_version", "preset", "limits", "face_lpips", "measured", "weak"):
        assert key in face, key
    assert face["targets"] == ["face"] and face["faces"] == 1
    assert face["output"] == str(photos / "face.ghost.jpg")
    r = face["target_results"]["face"]
    assert len(r["cosine_before"]) == len(r["cosine_after"]) == 1 and r["cosine_after"][0] < r["cosine_before"][0]
    assert r["kind"] == "face" and r["protected"] == [False]
    assert len(face["face_dlib_distance"]) == 1 and face["face_dlib_distance"][0] > 0
    assert face["limits"] == settings_for("stealth").limits()  # every limit, from the one place that sets them
    assert 0 < face["max_delta"] <= face["limits"]["noise_limit"] and face["psnr"] > 25 and face["ssim"] > 0.8
    rob = face["robustness"]
    assert rob["transform"] == "JPEG 75, long side 1080 px" and len(rob["face_dlib_distance"]) == 1
    assert face["weak"] is True and "face 1 still matched by face (distance " in face["reason"]
    assert "face" in rob["targets"]
    sky = entries[1]
    assert sky["faces"] == 0 and sky["output"] is None
    assert sky["reason"] == "no face found: nothing for the face recognizers to protect"
    # EXIF carried over
    exif = piexif.load(str(photos / "face.ghost.jpg"))
    assert exif["0th"][piexif.ImageIFD.Model] == b"Canon EOS 40D"
    assert f"{photos / 'face.jpg'} -> {photos / 'face.ghost.jpg'}: weak (kept at your request): face 1 still matched" in err
    assert f"{photos / 'sky.jpg'}: skipped: no face found" in out


def test_a_photo_whose_budget_cannot_be_met_is_never_written_as_ok(photos, tmp_path):
    """One step cannot reach dlib's goal: the photo is weak, nothing is written under the protected
    name, the exit status is 1 and the line on stderr names the file and the target not reached."""
    report = tmp_path / "report.json"
    code, out, err = run_cli("protect", str(photos / "face.jpg"), "--steps", "1", "--targets", "face",
                             "--report", str(report))
    assert code == ExitStatus.ERROR
    assert not (photos / "face.ghost.jpg").exists()
    assert not [p for p in photos.iterdir() if p.name.startswith(".")]  # the measured candidate is gone
    (line,) = [ln for ln in err.splitlines() if "weak" in ln]
    assert line.startswith(f"{photos / 'face.jpg'}: weak: face 1 still matched by face (distance ")
    assert line.endswith("(not written; --keep-weak writes it anyway)")
    assert out == ""
    (entry,) = json.loads(report.read_text())
    assert entry["status"] == "weak" and entry["output"] is None and entry["weak"] is True
    assert entry["reason"] in line and entry["target_results"]["face"]["protected"] == [False]

    code, out, err = run_cli("protect", str(photos / "face.jpg"), "--steps", "1", "--targets", "face",
                             "--keep-weak", "--report", str(report))
    assert code == ExitStatus.ERROR
    assert (photos / "face.ghost.jpg").exists()
    (entry,) = json.loads(report.read_text())
    assert entry["status"] == "weak" and entry["output"] == str(photos / "face.ghost.jpg")
    assert "weak (kept at your request): face 1 still matched by face" in err


def test_no_face_with_face_only_targets_is_skipped_and_nothing_is_written(photos, tmp_path):
    # A real camera photo without a face (scaled down), and a flat synthetic one.
    with Image.open(shared_data("exif", "jpg", "Canon_40D.jpg")) as im:
        im.thumbnail((400, 400))
        im.save(photos / "camera.jpg", quality=90)
    report = tmp_path / "report.json"
    code, out, err = run_cli("protect", str(photos / "camera.jpg"), str(photos / "sky.jpg"), "--report", str(report), *FAST)
    assert code == ExitStatus.OK, err  # nothing to protect is not an error
    entries = json.loads(report.read_text())
    assert [(e["status"], e["output"], e["faces"]) for e in entries] == [("skipped", None, 0)] * 2
    assert all(e["reason"] == "no face found: nothing for the face recognizers to protect" for e in entries)
    assert not list(photos.glob("*.ghost.*"))
    assert f"{photos / 'sky.jpg'}: skipped: no face found: nothing for the face recognizers to protect" in out


def test_bad_file_fails_by_name_and_the_rest_go_on(photos):
    code, out, err = run_cli("protect", str(photos / "broken.jpg"), str(photos / "face.jpg"), "--keep-weak", *FAST)
    assert code == ExitStatus.ERROR
    assert "broken.jpg" in err and "Traceback" not in err
    assert (photos / "face.ghost.jpg").exists()
    assert not list(photos.glob("broken.ghost*"))


def test_outputs_are_skipped_and_folders_are_walked(photos, tmp_path):
    (photos / "broken.jpg").unlink()
    code, out, err = run_cli("protect", str(photos), "--keep-weak", *FAST)  # --keep-weak: an output to skip
    assert code == ExitStatus.ERROR, err  # the face is weak (two steps)
    assert "face.jpg -> " in err and "sky.jpg: skipped" in out
    first = sha(photos / "face.ghost.jpg")
    code, out, err = run_cli("protect", str(photos / "face.ghost.jpg"), *FAST)
    assert code == ExitStatus.OK and "skipped: already a Ghost Mesh output" in out
    assert sha(photos / "face.ghost.jpg") == first
    assert not (photos / "face.ghost.ghost.jpg").exists()


def test_out_dir(photos, tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    code, _, err = run_cli("protect", str(photos / "face.jpg"), "--out-dir", str(dest), "--keep-weak", *FAST)
    assert code == ExitStatus.ERROR, err  # weak, written because asked
    assert (dest / "face.ghost.jpg").exists() and not (photos / "face.ghost.jpg").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]


def test_a_link_at_the_protected_name_is_never_replaced(photos, tmp_path):
    elsewhere = tmp_path / "elsewhere.jpg"
    elsewhere.write_bytes(b"someone else's file")
    (photos / "face.ghost.jpg").symlink_to(elsewhere)
    code, _, err = run_cli("protect", str(photos / "face.jpg"), "--keep-weak", *FAST)
    assert code == ExitStatus.ERROR and "not a Ghost Mesh output" in err
    assert elsewhere.read_bytes() == b"someone else's file" and (photos / "face.ghost.jpg").is_symlink()
    assert not [p for p in photos.iterdir() if p.name.startswith(".")]


def test_in_place_replaces_the_export_keeping_exif(photos):
    target = photos / "face.jpg"
    before = sha(target)
    # --keep-weak: two steps give a weak copy; this test is about replacing the file and keeping EXIF.
    code, _, err = run_cli("protect", "--in-place", "--keep-weak", str(target), *FAST)
    assert code == ExitStatus.ERROR, err
    assert sha(target) != before
    assert piexif.load(str(target))["0th"][piexif.ImageIFD.Make] == b"Canon"
    assert not [p for p in photos.iterdir() if p.name.startswith(".")]  # no temporary left behind
    assert err.rstrip().splitlines()[-1].startswith(f"{target} -> {target}: weak (kept at your request): ")


def test_in_place_weak_leaves_the_input_byte_identical(photos):
    target = photos / "face.jpg"
    before = target.read_bytes()
    code, out, err = run_cli("protect", "--in-place", str(target), "--steps", "1", "--targets", "face")
    assert code == ExitStatus.ERROR
    assert target.read_bytes() == before
    assert not [p for p in photos.iterdir() if p.name.startswith(".")]
    last = err.rstrip().splitlines()[-1]  # the editor plugins show the last line
    assert last.startswith(f"{target}: weak: face 1 still matched by face (distance ")
    assert last.endswith("(left unchanged; --keep-weak replaces it anyway)")


@pytest.mark.parametrize("argv,needle", [
    (["protect"], "required"),
    (["protect", "x.jpg", "--preset", "loud"], "invalid choice"),
    (["protect", "x.jpg", "--steps", "0"], "at least 1"),
    (["protect", "x.jpg", "--noise-limit", "2"], "between 0 and 1"),
    (["protect", "x.jpg", "--flow-limit", "1"], "up to (not including) 1"),
    (["protect", "x.jpg", "--detail-gain", "1.5"], "from 0 to 1"),
    (["protect", "x.jpg", "--out-dir", "/nonexistent/dir"], "not an existing folder"),
    (["protect", "x.jpg", "--target-weights", "face"], "NAME=WEIGHT"),
    (["frobnicate"], "invalid choice"),
    ([], "a command is needed"),
])
def test_bad_usage_exits_2(argv, needle):
    code, _, err = run_cli(*argv)
    assert code == ExitStatus.USAGE
    assert needle in err


def test_unknown_target_is_usage_error(photos):
    code, _, err = run_cli("protect", str(photos / "sky.jpg"), "--targets", "nope")
    assert code in (ExitStatus.ERROR, ExitStatus.USAGE) and "unknown target" in err


def test_a_weight_for_an_unknown_target_is_refused(photos):
    code, _, err = run_cli("protect", str(photos / "sky.jpg"), "--target-weights", "nope=1")
    assert code in (ExitStatus.ERROR, ExitStatus.USAGE) and "unknown target" in err and "nope" in err


def test_named_missing_model_is_an_error_naming_it(photos, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code, _, err = run_cli("protect", str(photos / "sky.jpg"), "--targets", "siglip", "--steps", "1")
    assert code == ExitStatus.USAGE
    assert "siglip" in err and "from_pretrained" in err
    assert not (photos / "sky.ghost.jpg").exists()


def test_auto_targets_warn_loudly_when_siglip_is_missing(photos, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    report = tmp_path / "r.json"
    code, _, err = run_cli("protect", str(photos / "sky.jpg"), "--steps", "1", "--report", str(report))
    assert code == ExitStatus.OK
    assert "WARNING: target 'siglip' is not used" in err
    entry = json.loads(report.read_text())[0]
    assert "siglip" not in entry["targets"] and any("siglip" in w for w in entry["warnings"])


def test_verify_gives_the_report_numbers_and_the_same_verdict(photos):
    code, _, err = run_cli("protect", str(photos / "face.jpg"), "--keep-weak", *FAST)
    assert (photos / "face.ghost.jpg").exists(), err
    code, out, err = run_cli("verify", str(photos / "face.jpg"), str(photos / "face.ghost.jpg"), "--targets", "face")
    assert code == ExitStatus.ERROR, err  # the pair fails the verdict: weak
    entry = json.loads(out)
    assert entry["status"] == "weak" and entry["faces"] == 1 and entry["weak"] is True
    assert entry["reason"].startswith("face 1 still matched by face (distance ")
    assert f"{photos / 'face.ghost.jpg'}: weak: face 1 still matched by face" in err
    assert entry["target_results"]["face"]["distance_after"][0] > 0
    code, out, err = run_cli("verify", str(photos / "face.jpg"), str(photos / "sky.jpg"), "--targets", "face")
    assert code == ExitStatus.ERROR and "differs" in err


def test_models_lists_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code, out, _ = run_cli("models")
    assert code == ExitStatus.OK
    assert "face" in out and "available" in out
    assert "siglip" in out and "MISSING" in out and "how to get it" in out
    assert "lpips" in out
