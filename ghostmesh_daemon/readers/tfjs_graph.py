"""A TensorFlow.js graph model (``model.json`` + ``.bin`` shards) as a torch module of our own.

It lives with the readers because in this format the file is the architecture: the graph it reads is
what runs (for formats that carry only weights, the architecture is a module in :mod:`ghostmesh_daemon.nets`).

TF.js ships frozen TensorFlow graphs as JSON: ``modelTopology.node`` lists nodes (``name``, ``op``,
``input``, ``attr``) and ``weightsManifest`` lists the constant tensors stored, in order, in the
concatenated binary shards; each entry may be quantized (``quantization: {dtype: uint8|uint16, scale,
min}`` meaning ``value = q * scale + min``, or ``{dtype: float16}``). We read that format ourselves
instead of depending on TensorFlow, and interpret the graph with torch ops so that gradients reach the
input: a target needs ``d embedding / d pixels``, which TF.js cannot give a torch optimizer.

The interpreter keeps TensorFlow's NHWC layout for every tensor it passes between nodes, so element-wise
ops broadcast over channels exactly as in TF and ``Reshape`` flattens in TF's order; convolutions view
the NHWC tensor as channels-last NCHW (no copy) for ``torch.nn.functional.conv2d``.

Only the ops the graphs we ship use are implemented (see :data:`SUPPORTED_OPS`; fused convolutions take
every fused op TF writes, :data:`FUSED_ACTIVATIONS`, each tested against an independent reference); a graph
with any other op, or an attribute value we do not handle, is refused when the module is built, never
half-run. Files are read by :func:`load_graph_model`; the module itself is pure torch (no files in the
forward path).
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nets.layers import tf_same_padding

# TF.js dtype names in the weights manifest -> numpy dtypes of the stored (possibly quantized) bytes.
_STORED_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "bool": np.dtype("u1"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "float16": np.dtype("<f2"),
}

SUPPORTED_OPS = frozenset(
    {
        "Placeholder", "Const", "Identity",
        "Add", "AddV2", "Sub", "Mul", "Maximum", "Minimum",
        "Abs", "Relu", "Square", "Rsqrt", "Sum", "Squeeze",
        "Pad", "Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative", "MatMul", "Reshape",
    }
)

#: What a fused convolution may apply after the convolution itself, as TensorFlow's grappler writes
#: ``fused_ops``: first its ``num_args`` extra inputs are used by ``BiasAdd`` (one: the bias) or
#: ``FusedBatchNorm`` (four: scale, offset, mean, variance, with the ``epsilon`` attribute), then at most
#: one activation (``Prelu`` takes one more argument, its alpha; ``LeakyRelu`` the ``leakyrelu_alpha`` attribute).
FUSED_ACTIVATIONS = frozenset({"Relu", "Relu6", "Elu", "Sigmoid", "Tanh", "LeakyRelu", "Prelu"})


class GraphFormatError(ValueError):
    """The JSON or the weights do not describe a graph model this interpreter can run."""


@dataclass(frozen=True)
class GraphModelSpec:
    """The parsed content of a TF.js graph model: its nodes, its constants, its input and output names."""

    nodes: tuple[dict[str, Any], ...]
    constants: Mapping[str, np.ndarray]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def decode_weights(specs: Sequence[Mapping[str, Any]], data: bytes) -> dict[str, np.ndarray]:
    """Split the concatenated weight bytes ``data`` into named arrays, dequantizing as the manifest says.

    ``specs`` are the ``weights`` entries of every manifest group, in file order. Quantized floats are
    returned as float32 (``q * scale + min`` for uint8/uint16, IEEE half for float16), the way TF.js's
    ``decodeWeights`` does, so the module never sees the storage format.
    """
    out: dict[str, np.ndarray] = {}
    offset = 0
    for spec in specs:
        name, dtype, shape = spec["name"], spec["dtype"], tuple(int(s) for s in spec["shape"])
        count = math.prod(shape)
        quant = spec.get("quantization")
        stored = _STORED_DTYPES.get(quant["dtype"] if quant else dtype)
        if stored is None:
            raise GraphFormatError(f"weight {name!r}: unsupported dtype {quant['dtype'] if quant else dtype!r}")
        nbytes = count * stored.itemsize
        if offset + nbytes > len(data):
            raise GraphFormatError(f"weight {name!r}: needs bytes {offset}..{offset + nbytes}, file has {len(data)}")
        raw = np.frombuffer(data, dtype=stored, count=count, offset=offset).reshape(shape)
        offset += nbytes
        if quant is None:
            value = raw.astype(np.bool_) if dtype == "bool" else raw.copy()
        elif quant["dtype"] == "float16":
            value = raw.astype(np.float32)
        else:
            value = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
            if dtype == "int32":
                value = np.round(value).astype(np.int32)
        out[name] = value
    if offset != len(data):
        raise GraphFormatError(f"weights end at byte {offset} but the shards hold {len(data)} bytes")
    return out


def parse_graph_model(model_json: Mapping[str, Any], weight_data: bytes) -> GraphModelSpec:
    """Build a :class:`GraphModelSpec` from the parsed ``model.json`` and the concatenated shard bytes."""
    if model_json.get("format") not in (None, "graph-model"):
        raise GraphFormatError(f"format is {model_json.get('format')!r}, expected 'graph-model'")
    try:
        nodes = tuple(model_json["modelTopology"]["node"])
        groups = model_json["weightsManifest"]
    except KeyError as err:
        raise GraphFormatError(f"model.json has no {err.args[0]!r}") from None
    specs = [w for group in groups for w in group["weights"]]
    constants = decode_weights(specs, weight_data)
    for node in nodes:
        if node["op"] == "Const" and node["name"] not in constants:
            constants[node["name"]] = _inline_constant(node)
    signature = model_json.get("signature") or {}
    inputs = tuple(_node_name(k) for k in (signature.get("inputs") or {}))
    outputs = tuple(_node_name(k) for k in (signature.get("outputs") or {}))
    if not inputs:
        inputs = tuple(n["name"] for n in nodes if n["op"] == "Placeholder")
    if not outputs:
        consumed = {_node_name(i) for n in nodes for i in n.get("input", [])}
        outputs = tuple(n["name"] for n in nodes if n["name"] not in consumed and n["op"] not in ("Const", "Placeholder"))
    return GraphModelSpec(nodes=nodes, constants=constants, inputs=inputs, outputs=outputs)


def load_graph_model(json_path: str | Path) -> GraphModelSpec:
    """Read ``model.json`` and the shards its manifest names (relative to the JSON's folder)."""
    json_path = Path(json_path)
    model_json = json.loads(json_path.read_text(encoding="utf-8"))
    paths = [json_path.parent / p for group in model_json.get("weightsManifest", []) for p in group["paths"]]
    data = b"".join(p.read_bytes() for p in paths)
    return parse_graph_model(model_json, data)


def _node_name(ref: str) -> str:
    """``'name:0'`` or ``'^name'`` (a control input) -> ``'name'``."""
    return ref.lstrip("^").split(":")[0]


def _inline_constant(node: Mapping[str, Any]) -> np.ndarray:
    """A Const whose value lives in the JSON (small tensors) rather than in the weight shards."""
    tensor = node.get("attr", {}).get("value", {}).get("tensor", {})
    dims = tuple(int(d.get("size", 0)) for d in tensor.get("tensorShape", {}).get("dim", []))
    dtype = {"DT_FLOAT": np.float32, "DT_INT32": np.int32}.get(tensor.get("dtype", ""))
    if dtype is None:
        raise GraphFormatError(f"const {node['name']!r}: unsupported inline dtype {tensor.get('dtype')!r}")
    if "tensorContent" in tensor:
        return np.frombuffer(base64.b64decode(tensor["tensorContent"]), dtype=dtype).reshape(dims).copy()
    values = tensor.get("floatVal") or tensor.get("intVal")
    if values is None:
        raise GraphFormatError(f"const {node['name']!r} has no value in the manifest or the JSON")
    return np.full(dims, values[0], dtype=dtype) if len(values) == 1 else np.asarray(values, dtype=dtype).reshape(dims)


def _attr_ints(node: Mapping[str, Any], key: str, default: Sequence[int]) -> tuple[int, ...]:
    values = node.get("attr", {}).get(key, {}).get("list", {}).get("i")
    return tuple(int(v) for v in values) if values else tuple(default)


def _attr_str(node: Mapping[str, Any], key: str, default: str) -> str:
    value = node.get("attr", {}).get(key, {}).get("s")
    return base64.b64decode(value).decode() if value else default


def _attr_bool(node: Mapping[str, Any], key: str) -> bool:
    return bool(node.get("attr", {}).get(key, {}).get("b", False))


def _attr_float(node: Mapping[str, Any], key: str, default: float) -> float:
    value = node.get("attr", {}).get(key, {}).get("f")
    return float(value) if value is not None else default


def _attr_int(node: Mapping[str, Any], key: str, default: int) -> int:
    value = node.get("attr", {}).get(key, {}).get("i")
    return int(value) if value is not None else default


def _attr_strs(node: Mapping[str, Any], key: str) -> tuple[str, ...]:
    values = node.get("attr", {}).get(key, {}).get("list", {}).get("s") or []
    return tuple(base64.b64decode(v).decode() for v in values)


def _conv_nhwc(
    x: Tensor, weight: Tensor, stride: tuple[int, int], dilation: tuple[int, int], padding: str | tuple[int, int, int, int],
    groups: int, bias: Tensor | None = None,
) -> Tensor:
    """2-D convolution of an NHWC tensor with a torch-layout (O, I/groups, kh, kw) weight; NHWC out.

    ``padding`` is ``"SAME"``, ``"VALID"`` or explicit (left, right, top, bottom) pixels.
    """
    nchw = x.permute(0, 3, 1, 2)  # a channels-last view: no copy
    if padding == "SAME":
        kh, kw = weight.shape[-2:]
        top, bottom = tf_same_padding(nchw.shape[2], kh, stride[0], dilation[0])
        left, right = tf_same_padding(nchw.shape[3], kw, stride[1], dilation[1])
        nchw = F.pad(nchw, (left, right, top, bottom))
    elif isinstance(padding, tuple) and any(padding):
        nchw = F.pad(nchw, padding)
    y = F.conv2d(nchw, weight, bias, stride=stride, dilation=dilation, groups=groups)
    return y.permute(0, 2, 3, 1)


def _activation(kind: str, x: Tensor, alpha: Tensor | float | None = None) -> Tensor:
    """The activation a fused op names (TF's definitions; ``Prelu``/``LeakyRelu`` take ``alpha``)."""
    if kind == "Relu":
        return F.relu(x)
    if kind == "Relu6":
        return F.relu6(x)
    if kind == "Elu":
        return F.elu(x)
    if kind == "Sigmoid":
        return torch.sigmoid(x)
    if kind == "Tanh":
        return torch.tanh(x)
    if kind in ("LeakyRelu", "Prelu"):
        assert alpha is not None
        return torch.where(x >= 0, x, x * alpha)
    raise GraphFormatError(f"unsupported fused activation {kind!r}")  # pragma: no cover - checked at load


# A compiled node: (the module, its input tensors) -> output. Steps take the module as an argument
# (never close over it) so that copies of the module (deepcopy, .double()) use their own buffers.
_Step = Callable[[nn.Module, list[Tensor]], Tensor]


class TfjsGraph(nn.Module):
    """Runs a :class:`GraphModelSpec` with torch ops; ``forward(x)`` takes and returns TF-layout tensors.

    The constants become buffers (frozen weights, moved by ``.to(device)``); integer constants that only
    shape the computation (paddings, reshape targets) are kept as Python values so the forward pass has
    no host round trips. The graph is pruned to what ``output`` needs and checked op by op here, so an
    unsupported graph fails at load time with the op's name.

    Example::

        spec = load_graph_model("models/mobileface.json")
        net = TfjsGraph(spec)
        y = net(torch.rand(1, 112, 112, 3) * 255)  # (1, 256)
    """

    def __init__(self, spec: GraphModelSpec, output: str | None = None) -> None:
        super().__init__()
        if len(spec.inputs) != 1:
            raise GraphFormatError(f"expected one graph input, got {list(spec.inputs)}")
        if output is None and len(spec.outputs) != 1:
            raise GraphFormatError(f"the graph has outputs {list(spec.outputs)}: name the one to compute")
        self.input_name = spec.inputs[0]
        self.output_name = output or spec.outputs[0]
        by_name = {n["name"]: n for n in spec.nodes}
        order = self._topological_order(by_name, self.output_name)
        unsupported = sorted({by_name[n]["op"] for n in order} - SUPPORTED_OPS)
        if unsupported:
            raise GraphFormatError(f"unsupported TF.js ops: {', '.join(unsupported)}")

        self._slots: dict[str, int] = {}
        self._buffer_names: dict[str, str] = {}
        self._plan: list[tuple[int, _Step, tuple[int, ...]]] = []
        self.ops_used: tuple[str, ...] = tuple(sorted({by_name[n]["op"] for n in order}))
        for name in order:
            self._compile(by_name[name], spec.constants, by_name)

    @staticmethod
    def _topological_order(by_name: Mapping[str, Mapping[str, Any]], output: str) -> list[str]:
        order: list[str] = []
        state: dict[str, int] = {}
        stack: list[tuple[str, bool]] = [(output, False)]
        while stack:
            name, done = stack.pop()
            if done:
                state[name] = 2
                order.append(name)
                continue
            if state.get(name):
                if state[name] == 1:
                    raise GraphFormatError(f"the graph has a cycle through {name!r}")
                continue
            if name not in by_name:
                raise GraphFormatError(f"node {name!r} is referenced but not defined")
            state[name] = 1
            stack.append((name, True))
            for ref in reversed(by_name[name].get("input", [])):
                if not ref.startswith("^") and state.get(_node_name(ref)) != 2:
                    stack.append((_node_name(ref), False))
        return order

    def _buffer(self, name: str, value: np.ndarray | Tensor) -> str:
        key = "w_" + re.sub(r"\W", "_", name)
        while key in self._buffers and self._buffer_names.get(name) != key:
            key += "_"
        tensor = value if isinstance(value, Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        self.register_buffer(key, tensor.float() if tensor.is_floating_point() else tensor)
        self._buffer_names[name] = key
        return key

    def _static(self, constants: Mapping[str, np.ndarray], ref: str, node: Mapping[str, Any]) -> np.ndarray:
        name = _node_name(ref)
        if name not in constants:
            raise GraphFormatError(f"{node['op']} {node['name']!r}: input {name!r} must be a constant")
        return constants[name]

    def _compile(self, node: Mapping[str, Any], constants: Mapping[str, np.ndarray], by_name: Mapping[str, Any]) -> None:
        op, name = node["op"], node["name"]
        refs = [r for r in node.get("input", []) if not r.startswith("^")]
        slot = len(self._slots)
        self._slots[name] = slot
        if op == "Placeholder":
            return
        if op == "Const":
            value = constants[name]
            if value.dtype.kind == "f":
                key = self._buffer(name, value)
                self._plan.append((slot, lambda m, _a, key=key: getattr(m, key), ()))
            return  # integer constants are read statically by the ops that take them

        def args(*idx: int) -> tuple[int, ...]:
            return tuple(self._slots[_node_name(refs[i])] for i in idx)

        step: _Step
        if op == "Identity":
            step, ins = (lambda m, a: a[0]), args(0)
        elif op in ("Add", "AddV2"):
            step, ins = (lambda m, a: a[0] + a[1]), args(0, 1)
        elif op == "Sub":
            step, ins = (lambda m, a: a[0] - a[1]), args(0, 1)
        elif op == "Mul":
            step, ins = (lambda m, a: a[0] * a[1]), args(0, 1)
        elif op == "Maximum":
            step, ins = (lambda m, a: torch.maximum(a[0], a[1])), args(0, 1)
        elif op == "Minimum":
            step, ins = (lambda m, a: torch.minimum(a[0], a[1])), args(0, 1)
        elif op == "Abs":
            step, ins = (lambda m, a: a[0].abs()), args(0)
        elif op == "Relu":
            step, ins = (lambda m, a: F.relu(a[0])), args(0)
        elif op == "Square":
            step, ins = (lambda m, a: a[0] * a[0]), args(0)
        elif op == "Rsqrt":
            step, ins = (lambda m, a: torch.rsqrt(a[0])), args(0)
        elif op == "Sum":
            axes = tuple(int(v) for v in self._static(constants, refs[1], node).reshape(-1))
            keep = _attr_bool(node, "keep_dims")
            # An empty axis list reduces nothing in TF (torch's dim=() would reduce everything).
            step = (lambda m, a, d=axes, k=keep: a[0].sum(dim=d, keepdim=k)) if axes else (lambda m, a: a[0])  # noqa: E731
            ins = args(0)
        elif op == "Squeeze":
            dims = _attr_ints(node, "squeeze_dims", ())
            if dims:
                step = lambda m, a, d=dims: a[0].squeeze(tuple(d))  # noqa: E731
            else:  # no dims named: TF drops every axis of size 1
                step = lambda m, a: a[0].squeeze()  # noqa: E731
            ins = args(0)
        elif op == "Pad":
            pads = self._static(constants, refs[1], node).astype(int)
            torch_pads = tuple(int(v) for pair in pads[::-1] for v in pair)  # last axis first
            step, ins = (lambda m, a, p=torch_pads: F.pad(a[0], p)), args(0)
        elif op == "Reshape":
            shape = tuple(int(v) for v in self._static(constants, refs[1], node).reshape(-1))
            step, ins = (lambda m, a, s=shape: a[0].reshape(s)), args(0)
        elif op == "MatMul":
            ta, tb = _attr_bool(node, "transpose_a"), _attr_bool(node, "transpose_b")
            step = lambda m, a, ta=ta, tb=tb: (a[0].mT if ta else a[0]) @ (a[1].mT if tb else a[1])  # noqa: E731
            ins = args(0, 1)
        elif op in ("Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative"):
            step, ins = self._compile_conv(node, refs, constants, args)
        else:  # pragma: no cover - guarded by SUPPORTED_OPS
            raise GraphFormatError(f"unsupported op {op!r} in node {name!r}")
        self._plan.append((slot, step, ins))

    def _compile_conv(
        self, node: Mapping[str, Any], refs: list[str], constants: Mapping[str, np.ndarray], args: Callable[..., tuple[int, ...]]
    ) -> tuple[_Step, tuple[int, ...]]:
        """A convolution, plain or fused (grappler's ``_FusedConv2D``, TF.js's ``FusedDepthwiseConv2dNative``).

        Reads ``padding`` (SAME, VALID or EXPLICIT with ``explicit_paddings``), ``strides``, ``dilations``;
        for fused ops ``fused_ops``, ``num_args``, ``epsilon`` and ``leakyrelu_alpha``. The kernel must be a
        constant (it is re-laid out for torch once, here); the fused arguments are ordinary inputs.
        """
        op, name = node["op"], node["name"]
        if _attr_str(node, "data_format", "NHWC") != "NHWC":
            raise GraphFormatError(f"{op} {name!r}: only NHWC is supported")
        strides = _attr_ints(node, "strides", (1, 1, 1, 1))
        dilations = _attr_ints(node, "dilations", (1, 1, 1, 1))
        if strides[0] != 1 or strides[3] != 1 or dilations[0] != 1 or dilations[3] != 1:
            raise GraphFormatError(f"{op} {name!r}: strides {strides} / dilations {dilations} over batch or channels")
        padding_attr = _attr_str(node, "padding", "VALID")
        padding: str | tuple[int, int, int, int]
        if padding_attr in ("VALID", "SAME"):
            padding = padding_attr
        elif padding_attr == "EXPLICIT":
            explicit = _attr_ints(node, "explicit_paddings", ())
            if len(explicit) != 8 or any(explicit[:2]) or any(explicit[6:]):
                raise GraphFormatError(f"{op} {name!r}: explicit_paddings {explicit} must pad only H and W")
            padding = (explicit[4], explicit[5], explicit[2], explicit[3])  # left, right, top, bottom
        else:
            raise GraphFormatError(f"{op} {name!r}: padding {padding_attr!r} is not supported")
        kernel = self._static(constants, refs[1], node)  # (kh, kw, in, out) or (kh, kw, in, multiplier)
        if kernel.ndim != 4:
            raise GraphFormatError(f"{op} {name!r}: kernel of shape {kernel.shape}, expected 4-D")
        kh, kw, cin, cout = kernel.shape
        if op in ("Conv2D", "_FusedConv2D"):
            weight, groups = torch.from_numpy(kernel.copy()).permute(3, 2, 0, 1), 1
        else:
            # TF depthwise output channel c * multiplier + m; torch groups=cin gives the same order.
            weight = torch.from_numpy(kernel.copy()).permute(2, 3, 0, 1).reshape(cin * cout, 1, kh, kw)
            groups = cin
        key = self._buffer(name + "/torch_weight", weight.contiguous())
        conv = dict(s=strides[1:3], d=dilations[1:3], p=padding, g=groups)

        fused = _attr_strs(node, "fused_ops") if op.startswith(("_Fused", "Fused")) else ()
        if not fused:
            if op.startswith(("_Fused", "Fused")):
                raise GraphFormatError(f"{op} {name!r}: no fused_ops")
            step = lambda m, a, key=key, c=conv: _conv_nhwc(a[0], getattr(m, key), c["s"], c["d"], c["p"], c["g"])  # noqa: E731
            return step, args(0)

        num_args = _attr_int(node, "num_args", 0)
        norm, activations = fused[0], fused[1:]
        if norm not in ("BiasAdd", "FusedBatchNorm") or len(activations) > 1 or not set(activations) <= FUSED_ACTIVATIONS:
            raise GraphFormatError(f"{op} {name!r}: unsupported fused_ops {list(fused)}")
        activation = activations[0] if activations else None
        expected = (1 if norm == "BiasAdd" else 4) + (1 if activation == "Prelu" else 0)
        if num_args != expected or len(refs) != 2 + expected:
            raise GraphFormatError(f"{op} {name!r}: fused_ops {list(fused)} need {expected} arguments, "
                                   f"num_args is {num_args} and the node has {len(refs) - 2}")
        epsilon = _attr_float(node, "epsilon", 1e-4)  # TF's defaults for the two attributes
        leaky = _attr_float(node, "leakyrelu_alpha", 0.2)
        ins = args(0, *range(2, 2 + expected))

        def step(m: nn.Module, a: list[Tensor], key: str = key, c: dict = conv, norm: str = norm,
                 act: str | None = activation, eps: float = epsilon, leaky: float = leaky) -> Tensor:
            if norm == "BiasAdd":
                y = _conv_nhwc(a[0], getattr(m, key), c["s"], c["d"], c["p"], c["g"], bias=a[1])
                rest = a[2:]
            else:  # (y - mean) / sqrt(variance + epsilon) * scale + offset, per channel (the last axis)
                y = _conv_nhwc(a[0], getattr(m, key), c["s"], c["d"], c["p"], c["g"])
                scale, offset, mean, variance = a[1:5]
                y = (y - mean) * (torch.rsqrt(variance + eps) * scale) + offset
                rest = a[5:]
            if act is None:
                return y
            return _activation(act, y, rest[0] if act == "Prelu" else leaky)

        return step, ins

    def forward(self, x: Tensor) -> Tensor:
        """Evaluate the graph on ``x`` (the graph's input, in TF layout, e.g. (N, H, W, C)); returns the output."""
        values: list[Tensor | None] = [None] * len(self._slots)
        values[self._slots[self.input_name]] = x
        for slot, step, ins in self._plan:
            values[slot] = step(self, [values[i] for i in ins])  # type: ignore[misc]
        out = values[self._slots[self.output_name]]
        assert out is not None
        return out
