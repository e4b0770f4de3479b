"""A copy that dlib still matches after an upload-like recompression is protected again, stronger."""

from __future__ import annotations


from PIL import Image

from ghostmesh_daemon.cli.run import make_processor
from ghostmesh_daemon.config import parse_config
from ghostmesh_daemon.engine import settings_for
from ghostmesh_daemon.pipeline import Protector

from conftest import shared_data


def test_weak_copy_is_redone_with_the_configured_preset(tmp_path, face_target):
    src = tmp_path / "face.jpg"
    im = Image.open(shared_data("faces", "biden", "biden.jpg"))
    im.thumbnail((400, 400))
    im.save(src, quality=92)
    protector = Protector(settings_for("stealth", steps=2), targets=[face_target])
    config = parse_config({"retry": {"weak_preset": "panic"}})
    entry = make_processor(protector, config)(src, should_stop=lambda: False, progress=None)
    assert entry.status == "ok"
    assert entry.preset == "panic"  # 2 stealth steps are weak; the copy on disk is the panic one
    assert entry.limits["flow_limit"] == 0.03 and entry.steps <= 2  # the user's step count is kept
    assert any("retried with the panic preset" in n for n in entry.notes)

    off = make_processor(protector, parse_config({"retry": {"weak_preset": ""}}))(src, should_stop=lambda: False, progress=None)
    assert off.preset == "stealth" and off.weak


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
        assert protector.protect_file(tmp_path / name).status == "ok"
    with Image.open(tmp_path / "a.jpg") as src:
        assert seen[0] is not None and list(seen[0].luma) == list(src.quantization[0]) and seen[0].subsampling == (2, 2)
    assert seen[1] is None
