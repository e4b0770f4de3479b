"""Layers the ported networks share: batch norm frozen to its statistics, and TensorFlow's SAME padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FrozenBatchNorm(nn.Module):
    """Batch norm that always normalises with its stored statistics: ``train()`` does not change it.

    The ported networks are only ever run for inference and for gradients with respect to their input;
    ``nn.BatchNorm2d`` would switch to batch statistics if anything called ``train()``.
    """

    def __init__(self, channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = float(eps)
        for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((channels,), fill))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps:g}"


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's SAME padding along one axis: (before, after), the odd pixel after.

    Output size ceil(size / stride); total padding ``max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)``.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2
