"""Resampling matches what the real models' own preprocessing does; every target follows the protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ghostmesh_daemon.engine.geometry import affine_patch, squash
from ghostmesh_daemon.engine.scene import FaceView, Scene, ViewGeometry
from ghostmesh_daemon.targets import Target, create_target, list_targets, register_target

from conftest import shared_data


def _photo(*parts: str) -> np.ndarray:
    return np.asarray(Image.open(shared_data(*parts)).convert("RGB")).copy()


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


def test_squash_matches_siglip_image_processor():
    from transformers import SiglipImageProcessor

    rgb = _photo("faces", "obama", "obama.jpg")
    processor = SiglipImageProcessor(size={"height": 384, "width": 384})
    ref = processor(images=Image.fromarray(rgb), return_tensors="pt")["pixel_values"]
    ours = (squash(_tensor(rgb), (384, 384)) - 0.5) / 0.5
    diff = (ours - ref).abs()
    # The processor rounds to uint8 after resizing (1/255 = 0.0078 after normalisation is 2/255).
    # PIL resamples uint8 in fixed point: a rare pixel differs by a few more levels.
    assert float(diff.mean()) < 0.01
    assert float(torch.quantile(diff.flatten()[::7], 0.999)) < 0.03
    assert float(diff.max()) < 0.1


@pytest.mark.parametrize("person,name,mean_levels", [
    ("obama", "obama.jpg", 1.0),  # chip 2x smaller than the face: dlib samples bilinearly, as we do
    ("biden", "biden.jpg", 2.5),  # one pyramid level: dlib's 5-tap filter vs our antialiased halving
])
def test_affine_patch_matches_dlib_face_chip(person, name, mean_levels):
    import dlib

    from ghostmesh_daemon.faces import detect_faces, _dlib_models

    rgb = _photo("faces", person, name)
    face = detect_faces(rgb)[0]
    _, predictor = _dlib_models()
    rect = dlib.rectangle(*(int(v) for v in face.box))
    ref = dlib.get_face_chip(rgb, predictor(rgb, rect), 150, 0.25).astype(np.float32)
    ours = affine_patch(_tensor(rgb), face.chip_to_image, (150, 150))[0].permute(1, 2, 0).numpy() * 255
    diff = np.abs(ours - ref)
    assert diff.mean() < mean_levels, diff.mean()
    assert np.percentile(diff, 99) < 12


def test_dlib_port_matches_dlib_on_the_same_chip(face_target):
    import dlib

    from ghostmesh_daemon.faces import _dlib_models
    from ghostmesh_daemon.weights import dlib_face_resnet

    rec = dlib.face_recognition_model_v1(str(dlib_face_resnet().path))
    detector, predictor = _dlib_models()
    for person, name in [("obama", "obama.jpg"), ("biden", "biden.jpg"), ("rose_leslie", "img1.jpg")]:
        rgb = _photo("faces", person, name)
        rect = detector(rgb, 1)[0]
        chip = dlib.get_face_chip(rgb, predictor(rgb, rect), 150, 0.25)
        ref = np.array(rec.compute_face_descriptor(chip))
        with torch.no_grad():
            ours = face_target.net(_tensor(chip))[0].numpy()
        assert np.abs(ours - ref).max() < 1e-5


def test_dlib_port_reads_the_file_to_its_end_and_knows_the_threshold(face_target):
    assert face_target.net.threshold == pytest.approx(0.6, abs=1e-6)
    assert sum(p.numel() for p in face_target.net.parameters()) + 0 > 5_000_000


def test_dlib_parser_rejects_a_truncated_file():
    from ghostmesh_daemon.readers.dlib_dat import DlibFormatError, parse_dat
    from ghostmesh_daemon.weights import dlib_face_resnet

    data = dlib_face_resnet().path.read_bytes()
    with pytest.raises((DlibFormatError, ValueError, IndexError)):
        parse_dat(data[: len(data) // 2])


@pytest.fixture(scope="module")
def targets(face_target, tiny_siglip):
    made = {}
    for name in list_targets():
        if name == "face":
            made[name] = face_target
        elif name == "siglip":
            made[name] = create_target("siglip", model=tiny_siglip)
        else:
            made[name] = create_target(name)  # their weights ship with the install
    return made


@pytest.fixture(scope="module")
def face_scene():
    from ghostmesh_daemon.faces import detect_faces

    rgb = _photo("faces", "_mixed", "two_people.jpg")
    faces = detect_faces(rgb)
    assert len(faces) >= 2
    x = _tensor(rgb).requires_grad_()
    H, W = rgb.shape[:2]
    whole = ViewGeometry(box=(0, 0, W, H), size=(H, W))
    return x, Scene(whole=x, faces=[FaceView(f, whole, x) for f in faces])


@pytest.mark.parametrize("name", list_targets())
def test_every_target_embeds_differentiably(name, targets, face_scene):
    x, scene = face_scene
    target = targets[name]
    assert isinstance(target, Target) and target.name == name
    emb = target.embed(scene)
    rows = len(scene.faces) if target.info.kind == "face" else 1
    assert emb.shape[0] == rows and emb.ndim == 2 and emb.shape[1] > 0
    assert torch.isfinite(emb).all()
    (grad,) = torch.autograd.grad(emb.sum(), x)
    assert grad.abs().sum() > 0
    ref = emb.detach()
    assert torch.allclose(target.distance(ref, emb.detach()), torch.zeros(rows), atol=1e-4)
    assert target.protected(ref, emb.detach()).sum() == 0


@pytest.mark.parametrize("name", [n for n in list_targets() if n != "siglip"])
def test_face_targets_see_no_rows_without_faces(name, targets):
    x = torch.rand(1, 3, 64, 64)
    emb = targets[name].embed(Scene(whole=x, faces=[]))
    assert emb.shape[0] == 0


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_target("face")(lambda **kw: None)


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: .*face"):
        create_target("nope")


def test_missing_siglip_is_a_clear_error(monkeypatch, tmp_path):
    from ghostmesh_daemon.errors import ModelUnavailable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelUnavailable, match="siglip") as e:
        create_target("siglip", siglip_model="google/siglip-base-patch16-384")
    assert "from_pretrained" in e.value.how_to_get


def test_siglip_loads_from_a_local_folder(tmp_path, tiny_siglip):
    tiny_siglip.save_pretrained(tmp_path / "tiny")
    target = create_target("siglip", siglip_model=str(tmp_path / "tiny"))
    x = torch.rand(1, 3, 80, 120)
    with torch.no_grad():
        a = target.embed(Scene(whole=x))
        b = create_target("siglip", model=tiny_siglip).embed(Scene(whole=x))
    assert torch.allclose(a, b, atol=1e-5)


def test_a_scaled_face_maps_to_the_same_place_in_a_resized_photo():
    import torch

    from ghostmesh_daemon.engine.scene import Face

    face = Face(box=(10.0, 20.0, 110.0, 120.0), landmarks=torch.tensor([[30.0, 50.0]] * 5),
                chip_to_image=torch.tensor([[0.7, 0.0, 10.0], [0.0, 0.7, 20.0]]))
    half = face.scaled(0.5, 0.5)
    assert half.box == (5.0, 10.0, 55.0, 60.0)
    # chip pixel (0, 0) sits at image pixel (10, 20): pixel-centre convention -> (4.75, 9.75)
    corner = half.chip_to_image @ torch.tensor([0.0, 0.0, 1.0])
    assert torch.allclose(corner, torch.tensor([4.75, 9.75]))
    assert torch.allclose(half.landmarks[0], torch.tensor([14.75, 24.75]))
