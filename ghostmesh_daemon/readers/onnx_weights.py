"""Read an ONNX file's weights as float32 numpy arrays, and its graph, for whoever builds the network.

:func:`read_onnx` parses the file with the ``onnx`` package (no runtime) and returns an :class:`OnnxGraph`:
``constants``, every tensor whose value the file fixes (initializers, ``Constant`` nodes, and the outputs
of ``DequantizeLinear`` nodes fed only by those, dequantized once here), and ``nodes``, the rest of the
graph in file order, with the names of the real inputs and outputs. It knows nothing about any
particular network: turning nodes and constants into torch layers is the business of :mod:`ghostmesh_daemon.nets`.

Initializers that the file also lists in ``graph.input`` (older exporters do that, which makes them
overridable at run time) are treated as constants, as every runtime does when they are not fed. Declared
inputs that no node reads (quantizing tools leave the float weights' old names behind, without data) are
set apart in ``unused_inputs``: onnxruntime insists on being fed them, OpenCV ignores them, and so do we.

:func:`dequantize` is ``DequantizeLinear`` (opset 10-21) on arrays, exactly as the operator defines it:
``y = (x - x_zero_point) * x_scale``, the difference taken on integers (exact) and the product rounded
once to the scale's float type. The scale (and zero point) is a scalar (per tensor), a 1-D array along
``axis`` (per axis), or, with ``block_size`` > 0 (opset 21), an array of the input's rank whose ``axis``
dimension is ``ceil(n / block_size)``: each scale covers ``block_size`` consecutive elements along
``axis``, the last block possibly partial. Anything else (an integer type numpy lacks, such as int4 or
float8, a bfloat16 scale, a ``DequantizeLinear`` fed by a computed tensor) raises
:class:`OnnxFormatError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["OnnxFormatError", "OnnxGraph", "OnnxNode", "dequantize", "read_onnx"]

#: Integer types ``DequantizeLinear`` may take here (numpy has no int4/uint4/float8).
_QUANTIZED = (np.int8, np.uint8, np.int16, np.uint16, np.int32)
#: Scale types (numpy has no bfloat16).
_SCALES = (np.float32, np.float16)


class OnnxFormatError(ValueError):
    """The ONNX file uses something this reader does not support (the message names the file)."""


@dataclass(frozen=True)
class OnnxNode:
    """One node of the graph: ``op_type``, input and output tensor names, attributes as Python values.

    An absent optional input is the empty string, as in ONNX.
    """

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, Any]
    domain: str = ""


@dataclass(frozen=True)
class OnnxGraph:
    """What :func:`read_onnx` found.

    ``constants`` maps tensor names to arrays (floats as float32, dequantized; shapes and indices keep
    their integer type); ``nodes`` are the remaining nodes in file order (ONNX requires topological
    order); ``inputs``/``outputs`` the names of the graph's real inputs (those without an initializer)
    and outputs; ``opset`` the default-domain opset; ``dequantized`` the names of the tensors that came
    out of ``DequantizeLinear`` here; ``unused_inputs`` the declared inputs without data that nothing reads.
    """

    path: Path
    opset: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    constants: dict[str, np.ndarray]
    nodes: tuple[OnnxNode, ...]
    dequantized: frozenset[str]
    unused_inputs: tuple[str, ...] = ()

    def constant(self, name: str) -> np.ndarray:
        """The constant called ``name``; a missing one is a format error naming the file."""
        try:
            return self.constants[name]
        except KeyError:
            raise OnnxFormatError(f"{self.path}: tensor {name!r} is not a constant of the graph") from None

    def op_types(self) -> tuple[str, ...]:
        """The distinct op types of :attr:`nodes`, sorted."""
        return tuple(sorted({n.op_type for n in self.nodes}))


def dequantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None, *,
               axis: int = 1, block_size: int = 0) -> np.ndarray:
    """ONNX ``DequantizeLinear`` on arrays: float32 (computed in the scale's type), same shape as ``x``.

    Raises ``ValueError`` (without a file name; :func:`read_onnx` adds it) for unsupported types or
    shapes that do not fit the operator's rules.
    """
    x = np.asarray(x)
    scale = np.asarray(scale)
    if x.dtype.type not in _QUANTIZED:
        raise ValueError(f"quantized type {x.dtype} is not supported (only {', '.join(t.__name__ for t in _QUANTIZED)})")
    if scale.dtype.type not in _SCALES:
        raise ValueError(f"scale type {scale.dtype} is not supported (only float32, float16)")
    if zero_point is None:
        zero_point = np.zeros(scale.shape, dtype=x.dtype)
    zero_point = np.asarray(zero_point)
    if zero_point.dtype != x.dtype:
        raise ValueError(f"zero point type {zero_point.dtype} differs from the input's {x.dtype}")
    if zero_point.shape != scale.shape:
        raise ValueError(f"zero point shape {zero_point.shape} differs from the scale's {scale.shape}")
    if x.ndim and not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for a rank-{x.ndim} input")
    axis = axis % x.ndim if x.ndim else 0

    if block_size < 0:
        raise ValueError(f"block_size {block_size} is negative")
    if block_size > 0:
        n = x.shape[axis]
        blocks = -(-n // block_size)
        want = x.shape[:axis] + (blocks,) + x.shape[axis + 1:]
        if scale.shape != want:
            raise ValueError(f"blocked scale of shape {scale.shape} does not fit input {x.shape} "
                             f"(axis {axis}, block_size {block_size}: expected {want})")
        scale = np.repeat(scale, block_size, axis=axis).take(np.arange(n), axis=axis)
        zero_point = np.repeat(zero_point, block_size, axis=axis).take(np.arange(n), axis=axis)
    elif scale.size == 1 and scale.ndim <= 1:  # per tensor (a scalar, or ONNX's 1-element 1-D form)
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    elif scale.ndim == 1 and x.ndim and scale.shape[0] == x.shape[axis]:  # per axis
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    else:
        raise ValueError(f"scale of shape {scale.shape} fits neither per-tensor, per-axis (axis {axis}) "
                         f"nor blocked quantization of an input of shape {x.shape}")
    # The integer difference is exact in int64; one float product, rounded once to the scale's type.
    diff = x.astype(np.int64) - zero_point.astype(np.int64)
    return (diff.astype(scale.dtype) * scale).astype(np.float32)


def _array(tensor, path: Path) -> np.ndarray:
    from onnx import numpy_helper

    try:
        a = numpy_helper.to_array(tensor, base_dir=str(path.parent))
    except Exception as err:  # onnx raises various types for unknown element types or missing external data
        raise OnnxFormatError(f"{path}: cannot read tensor {tensor.name!r}: {err}") from None
    if a.dtype.kind == "f" and a.dtype != np.float32:
        if a.dtype.type not in (np.float16, np.float64):
            raise OnnxFormatError(f"{path}: tensor {tensor.name!r} has unsupported type {a.dtype}")
    return a


def _float32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) if a.dtype.kind == "f" and a.dtype != np.float32 else a


def read_onnx(path: str | Path) -> OnnxGraph:
    """Parse ``path`` (and any external data beside it); dequantize constant weights once.

    Raises :class:`OnnxFormatError` naming the file when it cannot be parsed, uses a non-default
    operator domain, or has a ``DequantizeLinear`` this reader cannot evaluate.
    """
    import onnx
    from onnx import helper

    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise OnnxFormatError(f"{path}: not a readable ONNX model: {err}") from None
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise OnnxFormatError(f"{path}: the model imports no default-domain opset")

    # Raw constants first (in their stored types: DequantizeLinear needs the integers).
    raw: dict[str, np.ndarray] = {t.name: _array(t, path) for t in graph.initializer}
    if graph.sparse_initializer:
        raise OnnxFormatError(f"{path}: sparse initializers are not supported")
    declared = [i.name for i in graph.input if i.name not in raw]

    nodes: list[OnnxNode] = []
    dequantized: set[str] = set()
    for proto in graph.node:
        if proto.domain not in ("", "ai.onnx"):
            raise OnnxFormatError(f"{path}: node {proto.name or proto.output[0]!r} uses operator domain "
                                  f"{proto.domain!r} ({proto.op_type}); only the default domain is supported")
        attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
        node = OnnxNode(proto.op_type, proto.name, tuple(proto.input), tuple(proto.output), attrs, proto.domain)
        if node.op_type == "Constant":
            if set(attrs) != {"value"}:
                raise OnnxFormatError(f"{path}: Constant {node.outputs[0]!r} uses {sorted(attrs)}; only 'value' is supported")
            raw[node.outputs[0]] = _array(attrs["value"], path)
            continue
        if node.op_type == "DequantizeLinear":
            raw[node.outputs[0]] = _dequantize_node(node, raw, path)
            dequantized.add(node.outputs[0])
            continue
        nodes.append(node)

    outputs = tuple(o.name for o in graph.output)
    read = {n for node in nodes for n in node.inputs} | set(outputs)
    constants = {k: _float32(v) for k, v in raw.items()}
    return OnnxGraph(path=path, opset=opset, inputs=tuple(n for n in declared if n in read), outputs=outputs,
                     constants=constants, nodes=tuple(nodes), dequantized=frozenset(dequantized),
                     unused_inputs=tuple(n for n in declared if n not in read))


def _dequantize_node(node: OnnxNode, raw: dict[str, np.ndarray], path: Path) -> np.ndarray:
    where = f"{path}: DequantizeLinear {node.name or node.outputs[0]!r}"
    unknown = set(node.attributes) - {"axis", "block_size"}
    if unknown:
        raise OnnxFormatError(f"{where}: unsupported attribute(s) {sorted(unknown)}")
    names = [n for n in node.inputs if n]
    missing = [n for n in names if n not in raw]
    if missing:
        raise OnnxFormatError(f"{where}: input(s) {missing} are computed at run time; only constant weights "
                              "are dequantized (activation quantization is not supported)")
    x = raw[node.inputs[0]]
    scale = raw[node.inputs[1]]
    zero_point = raw[node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] else None
    try:
        return dequantize(x, scale, zero_point, axis=int(node.attributes.get("axis", 1)),
                          block_size=int(node.attributes.get("block_size", 0)))
    except ValueError as err:
        raise OnnxFormatError(f"{where}: {err}") from None
