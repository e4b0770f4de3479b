"""The daemon's weak-photo retry: once, within the preset's visibility budgets unless the user opted
into panic, and never publishing a weak copy unless the user keeps weak copies."""

from __future__ import annotations

from dataclasses import replace

import pytest
from PIL import Image

from ghostmesh_daemon.cli.run import make_processor, retry_settings
from ghostmesh_daemon.config import parse_config
from ghostmesh_daemon.engine import settings_for
from ghostmesh_daemon.imaging import output_path
from ghostmesh_daemon.pipeline import Protector

from conftest import shared_data


@pytest.fixture
def face_photo(tmp_path):
    src = tmp_path / "face.jpg"
    im = Image.open(shared_data("faces", "biden", "biden.jpg"))
    im.thumbnail((400, 400))
    im.save(src, quality=92)
    return src


def test_retry_settings_keep_the_preset_by_default_and_panic_is_an_opt_in():
    current = settings_for("stealth", steps=7, seed=4, target_weights=(("mobileface", 0.5),))
    again = retry_settings(current, "")
    assert again == replace(current, seed=5, steps=14)  # same preset and budgets; only seed and steps change
    assert retry_settings(current, "stealth") == again  # naming the current preset is the same
    assert retry_settings(current, "off") is None
    panic = retry_settings(current, "panic")
    assert (panic.preset, panic.flow_limit, panic.steps, panic.seed) == ("panic", settings_for("panic").flow_limit, 7, 5)
    assert dict(panic.target_weights) == {**dict(settings_for("panic").target_weights), "mobileface": 0.5}  # what the user chose is kept
    assert retry_settings(settings_for("stealth"), "panic").steps == settings_for("panic").steps
    # and a preset's own weights stay with it: panic's dlib weight does not follow a retry into stealth
    back = retry_settings(settings_for("panic", target_weights=(("sface", 0.5),)), "stealth")
    assert (back.weight_of("face"), back.weight_of("sface")) == (1.0, 0.5)


def test_default_config_retries_weak_photos_once_with_the_same_preset():
    assert parse_config({})["retry.weak_preset"] == ""
    assert parse_config({})["output.keep_weak"] is False


def test_a_weak_photo_is_retried_once_within_the_preset_and_nothing_is_written(face_photo, face_target):
    protector = Protector(settings_for("stealth", steps=1), targets=[face_target])
    process = make_processor(protector, parse_config({}))
    entry = process(face_photo, should_stop=lambda: False, progress=None)
    assert entry.status == "weak" and entry.weak and entry.output is None
    assert entry.preset == "stealth" and entry.limits == protector.settings.limits()  # the same visibility budgets
    assert entry.steps == 2  # twice the steps (a weak run never stops early)
    (note,) = [n for n in entry.notes if n.startswith("retried once")]
    assert note.startswith("retried once with the same stealth preset, seed 1 and 2 steps: the first copy was weak "
                           "(face 1 still matched by face")
    assert not output_path(face_photo).exists()
    assert [p.name for p in face_photo.parent.iterdir()] == ["face.jpg"]  # no temporaries either


def test_panic_retry_and_keeping_weak_copies_are_opt_ins(face_photo, face_target):
    protector = Protector(settings_for("stealth", steps=1), targets=[face_target])
    config = parse_config({"retry": {"weak_preset": "panic"}, "output": {"keep_weak": True}})
    entry = make_processor(protector, config)(face_photo, should_stop=lambda: False, progress=None)
    assert entry.status == "weak" and entry.preset == "panic"
    assert entry.limits["flow_limit"] == settings_for("panic").flow_limit and entry.steps == 1  # the user's steps
    assert any(n.startswith("retried once with the panic preset (may be visible), seed 1 and 1 steps") for n in entry.notes)
    assert entry.output == str(output_path(face_photo)) and output_path(face_photo).exists()  # kept: asked for

    off = make_processor(protector, parse_config({"retry": {"weak_preset": "off"}}))
    output_path(face_photo).unlink()
    entry = off(face_photo, should_stop=lambda: False, progress=None)
    assert entry.status == "weak" and entry.preset == "stealth" and entry.steps == 1
    assert not any(n.startswith("retried") for n in entry.notes) and not output_path(face_photo).exists()


def test_protector_shows_the_optimizer_the_jpeg_it_writes(tmp_path, face_target, monkeypatch):
    """The pipeline hands the engine the original's own JPEG tables (and none for a PNG)."""
    import ghostmesh_daemon.pipeline as pipeline

    seen = []
    real = pipeline.protect_image
    monkeypatch.setattr(pipeline, "protect_image", lambda *a, **kw: seen.append(kw.get("codec")) or real(*a, **kw))
    im = Image.open(shared_data("faces", "biden", "biden.jpg"))
    im.thumbnail((300, 300))
    im.save(tmp_path / "a.jpg", quality=81, subsampling=2)
    im.save(tmp_path / "a.png")
    protector = Protector(settings_for("panic", steps=1), targets=[face_target])
    for name in ("a.jpg", "a.png"):
        assert protector.protect_file(tmp_path / name).status in ("ok", "weak")  # one step: weak, not failed
    with Image.open(tmp_path / "a.jpg") as src:
        assert seen[0] is not None and list(seen[0].luma) == list(src.quantization[0]) and seen[0].subsampling == (2, 2)
    assert seen[1] is None
