"""dlib's face-recognition ResNet (the ``face_recognition`` model) as a torch module.

Built from the layers :mod:`ghostmesh_daemon.readers.dlib_dat` reads out of dlib's ``.dat``; the residual
wiring is not in the file, so :data:`_ARCH` spells it out and the module checks that the file's layers
arrive in exactly that order.

Why a port at all: dlib's network is not differentiable from Python, and the optimizer needs
gradients of the descriptor with respect to the pixels.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..readers.dlib_dat import DlibFormatError, DlibLayer, DlibNet, parse_dat

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

    def __init__(self, con: DlibLayer, aff: DlibLayer) -> None:
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
