"""SFace, the face recognizer behind OpenCV's ``FaceRecognizerSF``, as an explicit torch module.

OpenCV Zoo's ``face_recognition_sface_2021dec`` (Zhong et al., "SFace: Sigmoid-Constrained Hypersphere
Loss for Robust Face Recognition", 2021) is an MXNet export with the layer names and layout of
InsightFace's ``fmobilenet`` backbone, a MobileNet-V1: a 3x3 convolution, then 13 depthwise-separable
blocks (3x3 depthwise, 1x1 pointwise; no residuals), each convolution followed by batch norm and PReLU;
stride 2 in blocks 3, 5, 7 and 13, so 112x112 becomes 7x7x1024; then InsightFace's "E" embedding head: batch norm, dropout (identity at
inference), flatten, a 50176 -> 128 dense layer, and a last batch norm. The 128-d output is not
normalised (OpenCV divides by the norm when it compares).

**Why explicit layers rather than an interpreter.** The graph is completely regular (the op inventory of
the int8 block-quantized file: 29 DequantizeLinear and 27 Reshape building the weights, then Sub, Mul,
27 x (Conv, BatchNormalization, PRelu), BatchNormalization, Dropout, Flatten, Gemm,
BatchNormalization), so :class:`SFaceNet` spells the architecture out with named layers and
:func:`sface_from_onnx` fills them by walking the graph: every node must be the next one the architecture
expects, read the previous node's output, and carry exactly the expected attributes (kernel, stride,
padding, groups, no bias, inference-mode batch norm); anything else (an op out of place, an unknown op or
attribute, a wrong shape, a graph that ends early or late) is refused at load with a message naming the
node. Nothing is folded: batch norms stay batch norms (:class:`FrozenBatchNorm`, always in inference
mode, as onnxruntime computes them), and the input's ``(x - 127.5) * 0.0078125`` is read from the file
into buffers.

Input: (N, 3, 112, 112) pixels in 0..255, **RGB** (OpenCV's ``FaceRecognizerSF::feature`` calls
``blobFromImage(aligned, 1, Size(112, 112), Scalar(0, 0, 0), swapRB=true)`` on its BGR crop), from the
ArcFace-aligned 112x112 crop. Output: (N, 128). This module reads no file: the ONNX file is parsed by
:mod:`ghostmesh_daemon.readers.onnx_weights`.
"""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np
import torch
from torch import Tensor, nn

from ..readers.onnx_weights import OnnxFormatError, OnnxGraph, OnnxNode
from .layers import FrozenBatchNorm

__all__ = ["EMBEDDING_DIM", "INPUT_SIZE", "SFACE_BLOCKS", "FrozenBatchNorm", "SFaceNet", "sface_from_onnx"]

INPUT_SIZE = 112
EMBEDDING_DIM = 128
STEM_CHANNELS = 32
#: (in channels, out channels, depthwise stride) of the 13 depthwise-separable blocks (``conv_2`` .. ``conv_14``).
SFACE_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
    (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 1024, 2), (1024, 1024, 1),
)
FINAL_GRID = 7  # 112 / 2**4


class ConvBNPReLU(nn.Module):
    """Convolution (no bias), batch norm, PReLU: one ``conv_*`` unit of the MXNet graph."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int = 1, eps: float = 1e-3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = FrozenBatchNorm(cout, eps)
        self.act = nn.PReLU(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise unit (stride 1 or 2) then 1x1 pointwise unit; no residual."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.dw = ConvBNPReLU(cin, cin, 3, stride, groups=cin)
        self.pw = ConvBNPReLU(cin, cout, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(self.dw(x))


class SFaceNet(nn.Module):
    """SFace: (N, 3, 112, 112) RGB pixels in 0..255 -> (N, 128) (not normalised). Weights via :func:`sface_from_onnx`."""

    def __init__(self) -> None:
        super().__init__()
        # The graph's own input normalisation, (x - mean) * scale; the values are read from the file.
        self.register_buffer("input_mean", torch.tensor(127.5))
        self.register_buffer("input_scale", torch.tensor(0.0078125))
        self.stem = ConvBNPReLU(3, STEM_CHANNELS, 3, 1)
        self.blocks = nn.Sequential(*(DepthwiseSeparable(cin, cout, s) for cin, cout, s in SFACE_BLOCKS))
        width = SFACE_BLOCKS[-1][1]
        self.bn1 = FrozenBatchNorm(width, 2e-5)
        self.fc = nn.Linear(width * FINAL_GRID * FINAL_GRID, EMBEDDING_DIM)
        self.features = FrozenBatchNorm(EMBEDDING_DIM, 2e-5)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) RGB pixels in 0..255, got {tuple(x.shape)}")
        x = (x - self.input_mean) * self.input_scale
        x = self.blocks(self.stem(x))
        x = self.bn1(x)  # then Dropout: the identity at inference
        return self.features(self.fc(torch.flatten(x, 1)))


# --- filling it from the ONNX graph -------------------------------------------------------------


class _Walk:
    """Walks the graph's nodes in order along the single activation path, checking each one."""

    def __init__(self, graph: OnnxGraph) -> None:
        self.graph = graph
        self.constants = dict(graph.constants)
        self.nodes: list[OnnxNode] = []
        for node in graph.nodes:  # Reshape of constants builds weights: evaluate it here
            if node.op_type == "Reshape" and all(n in self.constants for n in node.inputs if n):
                self.constants[node.outputs[0]] = self._reshape(node)
            else:
                self.nodes.append(node)
        if len(graph.inputs) != 1 or len(graph.outputs) != 1:
            self.fail(f"expected one input and one output, found inputs {list(graph.inputs)} and outputs {list(graph.outputs)}")
        self.current = graph.inputs[0]
        self.index = 0

    def fail(self, message: str) -> NoReturn:
        raise OnnxFormatError(f"{self.graph.path}: not the SFace graph this module knows: {message}")

    def _reshape(self, node: OnnxNode) -> np.ndarray:
        data, shape = self.constants[node.inputs[0]], self.constants[node.inputs[1]].astype(np.int64).tolist()
        if set(node.attributes) - {"allowzero"}:
            self.fail(f"Reshape {node.outputs[0]!r} has attributes {sorted(node.attributes)}")
        if not node.attributes.get("allowzero", 0):  # ONNX: 0 copies the input's dimension
            shape = [data.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        try:
            return data.reshape(shape)
        except ValueError as err:
            self.fail(f"Reshape {node.outputs[0]!r}: {err}")

    def take(self, op_type: str, n_inputs: tuple[int, ...], attributes: dict[str, Any], ignore: tuple[str, ...] = ()) -> OnnxNode:
        """The next node: of ``op_type``, reading the current activation first, with exactly ``attributes``
        (a missing one takes the given value, as its ONNX default) besides the ``ignore``d ones."""
        if self.index >= len(self.nodes):
            self.fail(f"the graph ends where a {op_type} was expected (after {self.current!r})")
        node = self.nodes[self.index]
        label = f"{node.op_type} {node.name or node.outputs[0]!r}"
        if node.op_type != op_type:
            self.fail(f"found {label} where a {op_type} was expected (after {self.current!r})")
        if not node.inputs or node.inputs[0] != self.current:
            self.fail(f"{label} reads {node.inputs[:1]}, not the previous output {self.current!r}")
        if len([n for n in node.inputs if n]) not in n_inputs:
            self.fail(f"{label} has inputs {list(node.inputs)} (expected {' or '.join(map(str, n_inputs))})")
        unknown = set(node.attributes) - set(attributes) - set(ignore)
        if unknown:
            self.fail(f"{label} has unsupported attribute(s) {sorted(unknown)}")
        for key, want in attributes.items():
            got = node.attributes.get(key, want)
            got = list(got) if isinstance(got, (list, tuple)) else got
            if got != want:
                self.fail(f"{label}: attribute {key} is {got!r}, expected {want!r}")
        self.current = node.outputs[0]
        self.index += 1
        return node

    def const(self, node: OnnxNode, i: int, shape: tuple[int, ...]) -> Tensor:
        name = node.inputs[i]
        if name not in self.constants:
            self.fail(f"{node.op_type} {node.outputs[0]!r}: input {name!r} is not a constant")
        a = np.asarray(self.constants[name], dtype=np.float32)
        if a.shape != shape:
            self.fail(f"{node.op_type} {node.outputs[0]!r}: {name!r} has shape {a.shape}, expected {shape}")
        return torch.from_numpy(a.copy())

    def scalar(self, node: OnnxNode, i: int) -> Tensor:
        name = node.inputs[i]
        a = self.constants.get(name)
        if a is None or a.size != 1:
            self.fail(f"{node.op_type} {node.outputs[0]!r}: input {name!r} is not a constant scalar")
        return torch.tensor(float(np.asarray(a).reshape(())), dtype=torch.float32)

    def conv_unit(self, unit: ConvBNPReLU) -> None:
        conv = unit.conv
        k, s, g = conv.kernel_size[0], conv.stride[0], conv.groups
        node = self.take("Conv", (2,), {"auto_pad": "NOTSET", "dilations": [1, 1], "group": g,
                                       "kernel_shape": [k, k], "pads": [k // 2] * 4, "strides": [s, s]})
        conv.weight.copy_(self.const(node, 1, tuple(conv.weight.shape)))
        self.batch_norm(unit.bn)
        node = self.take("PRelu", (2,), {})
        c = unit.act.weight.numel()
        slope = self.constants.get(node.inputs[1])
        if slope is None or slope.shape not in ((c,), (c, 1, 1)):
            self.fail(f"PRelu {node.outputs[0]!r}: slope {node.inputs[1]!r} is not a constant of shape ({c}, 1, 1)")
        unit.act.weight.copy_(torch.from_numpy(np.asarray(slope, dtype=np.float32).reshape(c)))

    def batch_norm(self, bn: FrozenBatchNorm) -> None:
        node = self.take("BatchNormalization", (5,), {"training_mode": 0, "spatial": 1}, ignore=("epsilon", "momentum"))
        c = bn.weight.numel()
        for i, name in enumerate(("weight", "bias", "running_mean", "running_var"), start=1):
            getattr(bn, name).copy_(self.const(node, i, (c,)))
        bn.eps = float(node.attributes.get("epsilon", 1e-5))

    def finish(self) -> None:
        if self.index != len(self.nodes):
            extra = self.nodes[self.index]
            self.fail(f"unexpected {extra.op_type} {extra.name or extra.outputs[0]!r} after the embedding")
        if self.current != self.graph.outputs[0]:
            self.fail(f"the walk ends at {self.current!r}, not at the graph's output {self.graph.outputs[0]!r}")


@torch.no_grad()
def sface_from_onnx(graph: OnnxGraph) -> SFaceNet:
    """An :class:`SFaceNet` holding the weights of ``graph`` (read by :func:`~ghostmesh_daemon.readers.onnx_weights.read_onnx`).

    Raises :class:`~ghostmesh_daemon.readers.onnx_weights.OnnxFormatError` naming the file and the node
    when the graph is not exactly this architecture. The weights are frozen (``requires_grad=False``):
    gradients flow to the input only.
    """
    net = SFaceNet()
    walk = _Walk(graph)
    node = walk.take("Sub", (2,), {})
    net.input_mean.copy_(walk.scalar(node, 1))
    node = walk.take("Mul", (2,), {})
    net.input_scale.copy_(walk.scalar(node, 1))
    walk.conv_unit(net.stem)
    for block in net.blocks:
        walk.conv_unit(block.dw)
        walk.conv_unit(block.pw)
    walk.batch_norm(net.bn1)
    node = walk.take("Dropout", (1, 2), {}, ignore=("ratio", "is_test", "seed"))
    if len(node.inputs) > 2 and node.inputs[2]:
        walk.fail(f"Dropout {node.outputs[0]!r} has a training_mode input")
    if len(node.outputs) > 1 and node.outputs[1]:
        walk.fail(f"Dropout {node.outputs[0]!r} outputs a mask")
    walk.take("Flatten", (1,), {"axis": 1})
    node = walk.take("Gemm", (3,), {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1})
    net.fc.weight.copy_(walk.const(node, 1, tuple(net.fc.weight.shape)))
    net.fc.bias.copy_(walk.const(node, 2, tuple(net.fc.bias.shape)))
    walk.batch_norm(net.features)
    walk.finish()
    return net.requires_grad_(False).eval()
