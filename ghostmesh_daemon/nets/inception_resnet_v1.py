"""Inception-ResNet-v1 as FaceNet uses it (Szegedy et al. 2016; Schroff et al. 2015; David Sandberg's facenet).

The network of Sandberg's ``models/inception_resnet_v1.py`` (the 20170512-110547 and 20180402-114759
models) and of its Keras port (nyoki-mtl/keras-facenet), with the Keras port's layer names:

=================  ==================================================================================
stem               Conv2d_1a_3x3 (stride 2), 2a_3x3, 2b_3x3 (same), MaxPool_3a_3x3, 3b_1x1, 4a_3x3,
                   4b_3x3 (stride 2): (3, 160, 160) -> (256, 17, 17)
Block35_1..5       three branches (1x1; 1x1-3x3; 1x1-3x3-3x3), 1x1 back to 256, residual x 0.17, ReLU
Mixed_6a           reduction A (3x3 stride 2; 1x1-3x3-3x3 stride 2; max pool): -> (896, 8, 8)
Block17_1..10      two branches (1x1; 1x1-1x7-7x1), 1x1 back to 896, residual x 0.1, ReLU
Mixed_7a           reduction B (three conv branches, stride 2; max pool): -> (1792, 3, 3)
Block8_1..5        two branches (1x1; 1x1-1x3-3x1), 1x1 back to 1792, residual x 0.2, ReLU
Block8_6           the same with residual x 1.0 and no ReLU
head               global average pool, dropout (identity in eval), Bottleneck dense 1792 -> 128 without
                   bias, Bottleneck_BatchNorm, L2 normalisation
=================  ==================================================================================

Every convolution but the residual 1x1s has no bias and is followed by batch norm (Keras
``scale=False``: no gamma) and ReLU. Batch norm is frozen (:class:`FrozenBatchNorm`, running statistics
only, whatever ``train()`` says): this module is for inference and for gradients through a fixed network.
Convolutions and pools pad as TensorFlow does (:func:`tf_same_padding`: "same" puts the odd pixel
after, on the bottom/right). The Keras port pads "same" only at stride 1 with odd kernels, where that
is symmetric, but the asymmetric case is implemented exactly all the same.

:meth:`InceptionResNetV1.from_keras` fills the module from a Keras file read by
:func:`ghostmesh_daemon.readers.keras_h5.read_keras_h5` (this module reads no files). It takes batch-norm
epsilons, the residual scales and whether each Block8 ends in a ReLU from the file's architecture, checks
every layer's kernel size, strides, padding and bias against this module, and refuses a file with any
weight left unused. Input: (N, 3, 160, 160) RGB already standardised (FaceNet's "prewhitening", see
:func:`prewhiten`); output (N, 128), unit norm.
"""

from __future__ import annotations

import ast
import math
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..readers.keras_h5 import KerasH5, KerasH5Error
from .layers import FrozenBatchNorm, tf_same_padding

INPUT_SIZE = 160
EMBEDDING_DIM = 128


def prewhiten(x: Tensor) -> Tensor:
    """Per-image standardisation, as FaceNet's ``facenet.prewhiten`` and ``tf.image.per_image_standardization``:
    ``(x - mean) / max(std, 1 / sqrt(n))`` over each image's n = C*H*W values (population std).

    Meant for 0..255 pixels (the floor then only matters for a nearly flat image); (N, C, H, W) in and out.
    """
    flat = x.flatten(1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, unbiased=False, keepdim=True).clamp_min(1.0 / math.sqrt(flat.shape[1]))
    return ((flat - mean) / std).view_as(x)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Conv2dTF(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's ``padding="valid" | "same"`` (asymmetric SAME done exactly)."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int | tuple[int, int] = 1,
                 padding: str = "same", bias: bool = False) -> None:
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        super().__init__(cin, cout, _pair(kernel), _pair(stride), padding=0, bias=bias)
        self.tf_padding = padding

    def forward(self, x: Tensor) -> Tensor:
        if self.tf_padding == "valid":
            return F.conv2d(x, self.weight, self.bias, self.stride)
        top, bottom = tf_same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = tf_same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, self.stride, padding=(top, left))
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tf_padding={self.tf_padding!r}"


class MaxPool2dTF(nn.Module):
    """Max pooling with TensorFlow's ``padding="valid" | "same"`` (SAME pads with -inf, odd pixel after)."""

    def __init__(self, kernel: int, stride: int, padding: str = "valid") -> None:
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        self.kernel, self.stride, self.tf_padding = kernel, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        if self.tf_padding == "same":
            top, bottom = tf_same_padding(x.shape[-2], self.kernel, self.stride)
            left, right = tf_same_padding(x.shape[-1], self.kernel, self.stride)
            x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, tf_padding={self.tf_padding!r}"


class BasicConv2d(nn.Module):
    """Convolution without bias, frozen batch norm, ReLU (Keras: ``<name>``, ``<name>_BatchNorm``, ``<name>_Activation``)."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding: str = "same") -> None:
        super().__init__()
        self.conv = Conv2dTF(cin, cout, kernel, stride, padding, bias=False)
        self.bn = FrozenBatchNorm(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class _ResidualBlock(nn.Module):
    """``act(x + scale * conv1x1(concat(branches(x))))``; ``act`` is ReLU, or nothing for FaceNet's last block."""

    scale: float
    activation: bool
    conv2d: Conv2dTF

    def branches(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        out = x + self.scale * self.conv2d(torch.cat(self.branches(x), dim=1))
        return F.relu(out) if self.activation else out

    def extra_repr(self) -> str:
        return f"scale={self.scale}, activation={self.activation}"


class Block35(_ResidualBlock):
    """Inception-ResNet-A on the 17x17 grid (256 channels)."""

    def __init__(self, scale: float = 0.17, activation: bool = True) -> None:
        super().__init__()
        self.scale, self.activation = float(scale), activation
        self.branch0 = BasicConv2d(256, 32, 1)
        self.branch1 = nn.Sequential(BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3))
        self.branch2 = nn.Sequential(BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3), BasicConv2d(32, 32, 3))
        self.conv2d = Conv2dTF(96, 256, 1, bias=True)

    def keras_parts(self) -> list[tuple[str, nn.Module]]:
        return [("Branch_0_Conv2d_1x1", self.branch0), ("Branch_1_Conv2d_0a_1x1", self.branch1[0]),
                ("Branch_1_Conv2d_0b_3x3", self.branch1[1]), ("Branch_2_Conv2d_0a_1x1", self.branch2[0]),
                ("Branch_2_Conv2d_0b_3x3", self.branch2[1]), ("Branch_2_Conv2d_0c_3x3", self.branch2[2]),
                ("Conv2d_1x1", self.conv2d)]

    def branches(self, x: Tensor) -> list[Tensor]:
        return [self.branch0(x), self.branch1(x), self.branch2(x)]


class Block17(_ResidualBlock):
    """Inception-ResNet-B on the 8x8 grid (896 channels)."""

    def __init__(self, scale: float = 0.1, activation: bool = True) -> None:
        super().__init__()
        self.scale, self.activation = float(scale), activation
        self.branch0 = BasicConv2d(896, 128, 1)
        self.branch1 = nn.Sequential(BasicConv2d(896, 128, 1), BasicConv2d(128, 128, (1, 7)), BasicConv2d(128, 128, (7, 1)))
        self.conv2d = Conv2dTF(256, 896, 1, bias=True)

    def keras_parts(self) -> list[tuple[str, nn.Module]]:
        return [("Branch_0_Conv2d_1x1", self.branch0), ("Branch_1_Conv2d_0a_1x1", self.branch1[0]),
                ("Branch_1_Conv2d_0b_1x7", self.branch1[1]), ("Branch_1_Conv2d_0c_7x1", self.branch1[2]),
                ("Conv2d_1x1", self.conv2d)]

    def branches(self, x: Tensor) -> list[Tensor]:
        return [self.branch0(x), self.branch1(x)]



class Block8(_ResidualBlock):
    """Inception-ResNet-C on the 3x3 grid (1792 channels)."""

    def __init__(self, scale: float = 0.2, activation: bool = True) -> None:
        super().__init__()
        self.scale, self.activation = float(scale), activation
        self.branch0 = BasicConv2d(1792, 192, 1)
        self.branch1 = nn.Sequential(BasicConv2d(1792, 192, 1), BasicConv2d(192, 192, (1, 3)), BasicConv2d(192, 192, (3, 1)))
        self.conv2d = Conv2dTF(384, 1792, 1, bias=True)

    def keras_parts(self) -> list[tuple[str, nn.Module]]:
        return [("Branch_0_Conv2d_1x1", self.branch0), ("Branch_1_Conv2d_0a_1x1", self.branch1[0]),
                ("Branch_1_Conv2d_0b_1x3", self.branch1[1]), ("Branch_1_Conv2d_0c_3x1", self.branch1[2]),
                ("Conv2d_1x1", self.conv2d)]

    def branches(self, x: Tensor) -> list[Tensor]:
        return [self.branch0(x), self.branch1(x)]



class Mixed6a(nn.Module):
    """Reduction A: 17x17x256 -> 8x8x896."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(256, 384, 3, stride=2, padding="valid")
        self.branch1 = nn.Sequential(BasicConv2d(256, 192, 1), BasicConv2d(192, 192, 3),
                                     BasicConv2d(192, 256, 3, stride=2, padding="valid"))
        self.branch2 = MaxPool2dTF(3, 2, "valid")

    def keras_parts(self) -> list[tuple[str, nn.Module]]:
        return [("Branch_0_Conv2d_1a_3x3", self.branch0), ("Branch_1_Conv2d_0a_1x1", self.branch1[0]),
                ("Branch_1_Conv2d_0b_3x3", self.branch1[1]), ("Branch_1_Conv2d_1a_3x3", self.branch1[2]),
                ("Branch_2_MaxPool_1a_3x3", self.branch2)]

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], dim=1)


class Mixed7a(nn.Module):
    """Reduction B: 8x8x896 -> 3x3x1792."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 384, 3, stride=2, padding="valid"))
        self.branch1 = nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3, stride=2, padding="valid"))
        self.branch2 = nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3),
                                     BasicConv2d(256, 256, 3, stride=2, padding="valid"))
        self.branch3 = MaxPool2dTF(3, 2, "valid")

    def keras_parts(self) -> list[tuple[str, nn.Module]]:
        return [("Branch_0_Conv2d_0a_1x1", self.branch0[0]), ("Branch_0_Conv2d_1a_3x3", self.branch0[1]),
                ("Branch_1_Conv2d_0a_1x1", self.branch1[0]), ("Branch_1_Conv2d_1a_3x3", self.branch1[1]),
                ("Branch_2_Conv2d_0a_1x1", self.branch2[0]), ("Branch_2_Conv2d_0b_3x3", self.branch2[1]),
                ("Branch_2_Conv2d_1a_3x3", self.branch2[2]), ("Branch_3_MaxPool_1a_3x3", self.branch3)]

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)


class InceptionResNetV1(nn.Module):
    """FaceNet's Inception-ResNet-v1: (N, 3, 160, 160) prewhitened RGB -> (N, 128) unit-norm embeddings.

    Other input sizes of at least 75x75 work (the network is fully convolutional up to its global pool);
    FaceNet was trained on 160x160.
    """

    def __init__(self, embedding_dim: int = EMBEDDING_DIM, dropout: float = 0.2) -> None:
        super().__init__()
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2, padding="valid")
        self.conv2d_2a = BasicConv2d(32, 32, 3, padding="valid")
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding="same")
        self.maxpool_3a = MaxPool2dTF(3, 2, "valid")
        self.conv2d_3b = BasicConv2d(64, 80, 1, padding="valid")
        self.conv2d_4a = BasicConv2d(80, 192, 3, padding="valid")
        self.conv2d_4b = BasicConv2d(192, 256, 3, stride=2, padding="valid")
        self.repeat_1 = nn.Sequential(*[Block35(0.17) for _ in range(5)])
        self.mixed_6a = Mixed6a()
        self.repeat_2 = nn.Sequential(*[Block17(0.1) for _ in range(10)])
        self.mixed_7a = Mixed7a()
        self.repeat_3 = nn.Sequential(*[Block8(0.2) for _ in range(5)])
        self.block8 = Block8(1.0, activation=False)
        self.dropout = nn.Dropout(dropout)
        self.last_linear = nn.Linear(1792, embedding_dim, bias=False)
        self.last_bn = FrozenBatchNorm(embedding_dim)

    def features(self, x: Tensor) -> Tensor:
        """The (N, 1792, h, w) map before the global pool."""
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(self.maxpool_3a(x))))
        x = self.mixed_6a(self.repeat_1(x))
        x = self.mixed_7a(self.repeat_2(x))
        return self.block8(self.repeat_3(x))

    def bottleneck(self, x: Tensor) -> Tensor:
        """What the Keras model outputs: the 128-d batch-normed bottleneck, before L2 normalisation."""
        pooled = self.features(x).mean(dim=(2, 3))
        return self.last_bn(self.last_linear(self.dropout(pooled)))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) prewhitened RGB, got {tuple(x.shape)}")
        return F.normalize(self.bottleneck(x), dim=1)

    # --- Keras weights ------------------------------------------------------------------------------

    def keras_parts(self) -> Iterator[tuple[str, nn.Module]]:
        """(Keras layer name, module) for every convolution, pool and dense layer, in graph order."""
        yield from [("Conv2d_1a_3x3", self.conv2d_1a), ("Conv2d_2a_3x3", self.conv2d_2a), ("Conv2d_2b_3x3", self.conv2d_2b),
                    ("MaxPool_3a_3x3", self.maxpool_3a), ("Conv2d_3b_1x1", self.conv2d_3b),
                    ("Conv2d_4a_3x3", self.conv2d_4a), ("Conv2d_4b_3x3", self.conv2d_4b)]
        blocks = ([(f"Block35_{i + 1}", b) for i, b in enumerate(self.repeat_1)] + [("Mixed_6a", self.mixed_6a)]
                  + [(f"Block17_{i + 1}", b) for i, b in enumerate(self.repeat_2)] + [("Mixed_7a", self.mixed_7a)]
                  + [(f"Block8_{i + 1}", b) for i, b in enumerate(self.repeat_3)]
                  + [(f"Block8_{len(self.repeat_3) + 1}", self.block8)])
        for prefix, block in blocks:
            for suffix, part in block.keras_parts():
                yield f"{prefix}_{suffix}", part
        yield "Bottleneck", self.last_linear

    def residual_blocks(self) -> Iterator[tuple[str, _ResidualBlock]]:
        """(Keras name prefix, block) for every residual block."""
        yield from ((f"Block35_{i + 1}", b) for i, b in enumerate(self.repeat_1))
        yield from ((f"Block17_{i + 1}", b) for i, b in enumerate(self.repeat_2))
        yield from ((f"Block8_{i + 1}", b) for i, b in enumerate(self.repeat_3))
        yield f"Block8_{len(self.repeat_3) + 1}", self.block8

    @classmethod
    def from_keras(cls, h5: KerasH5) -> "InceptionResNetV1":
        """A network holding the weights of the Keras FaceNet in ``h5`` (see the module docstring), in eval mode."""
        model = cls()
        _KerasLoader(h5).load(model)
        return model.eval()


class _KerasLoader:
    """Copies a :class:`KerasH5`'s arrays into an :class:`InceptionResNetV1`, checking each layer's config."""

    def __init__(self, h5: KerasH5) -> None:
        self.h5 = h5
        self.used: set[tuple[str, str]] = set()

    def fail(self, reason: str) -> KerasH5Error:
        return KerasH5Error(self.h5.path, f"does not fit Inception-ResNet-v1: {reason}")

    def take(self, layer: str, weight: str, shape: tuple[int, ...]) -> Tensor:
        weights = self.h5.layer(layer).weights
        if weight not in weights:
            raise self.fail(f"layer {layer!r} has no {weight!r} (has {sorted(weights)})")
        arr = weights[weight]
        if tuple(arr.shape) != tuple(shape):
            raise self.fail(f"{layer}/{weight} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
        self.used.add((layer, weight))
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))

    def config(self, layer: str, class_name: str) -> dict:
        """The layer's Keras config (empty for a weights-only file), checking its class."""
        entry = self.h5.layer(layer)
        if entry.class_name is not None and entry.class_name != class_name:
            raise self.fail(f"layer {layer!r} is a {entry.class_name}, expected a {class_name}")
        return entry.config

    def check(self, layer: str, config: dict, key: str, expected: object) -> None:
        if key in config and _norm(config[key]) != _norm(expected):
            raise self.fail(f"layer {layer!r} has {key}={config[key]!r}, this module has {expected!r}")

    def conv(self, name: str, conv: Conv2dTF) -> None:
        cfg = self.config(name, "Conv2D")
        kh, kw = conv.kernel_size
        self.check(name, cfg, "kernel_size", [kh, kw])
        self.check(name, cfg, "strides", list(conv.stride))
        self.check(name, cfg, "padding", conv.tf_padding)
        self.check(name, cfg, "dilation_rate", [1, 1])
        self.check(name, cfg, "use_bias", conv.bias is not None)
        self.check(name, cfg, "activation", "linear")
        self.check(name, cfg, "data_format", "channels_last")
        kernel = self.take(name, "kernel", (kh, kw, conv.in_channels, conv.out_channels))
        with torch.no_grad():
            conv.weight.copy_(kernel.permute(3, 2, 0, 1))  # Keras HWIO -> torch OIHW
            if conv.bias is not None:
                conv.bias.copy_(self.take(name, "bias", (conv.out_channels,)))

    def batch_norm(self, name: str, bn: FrozenBatchNorm) -> None:
        cfg = self.config(name, "BatchNormalization")
        n = bn.weight.shape[0]
        weights = self.h5.layer(name).weights
        with torch.no_grad():
            bn.running_mean.copy_(self.take(name, "moving_mean", (n,)))
            bn.running_var.copy_(self.take(name, "moving_variance", (n,)))
            scaled = cfg.get("scale", "gamma" in weights)
            centred = cfg.get("center", "beta" in weights)
            bn.weight.copy_(self.take(name, "gamma", (n,)) if scaled else torch.ones(n))
            bn.bias.copy_(self.take(name, "beta", (n,)) if centred else torch.zeros(n))
        if "epsilon" in cfg:
            bn.eps = float(cfg["epsilon"])

    def relu(self, name: str) -> None:
        if self.h5.has_config:
            cfg = self.config(name, "Activation")
            self.check(name, cfg, "activation", "relu")

    def pool(self, name: str, pool: MaxPool2dTF) -> None:
        cfg = self.config(name, "MaxPooling2D")
        self.check(name, cfg, "pool_size", [pool.kernel, pool.kernel])
        self.check(name, cfg, "strides", [pool.stride, pool.stride])
        self.check(name, cfg, "padding", pool.tf_padding)

    def residual(self, prefix: str, block: _ResidualBlock) -> None:
        """The block's scale (the Lambda after ``<prefix>_Conv2d_1x1``) and whether it ends in a ReLU."""
        if not self.h5.has_config:
            return  # a weights-only file: keep the architecture's defaults
        scales = [layer for layer in self.h5.consumers(f"{prefix}_Conv2d_1x1") if layer.class_name == "Lambda"]
        if len(scales) != 1:
            raise self.fail(f"expected one Lambda scaling {prefix}_Conv2d_1x1, found {len(scales)}")
        args = scales[0].config.get("arguments", {})
        if isinstance(args, str):
            args = ast.literal_eval(args)
        if "scale" not in args:
            raise self.fail(f"the Lambda after {prefix}_Conv2d_1x1 has no scale argument ({args!r})")
        block.scale = float(args["scale"])
        block.activation = f"{prefix}_Activation" in self.h5.layers
        if block.activation:
            self.relu(f"{prefix}_Activation")

    def load(self, model: InceptionResNetV1) -> None:
        for name, part in model.keras_parts():
            if isinstance(part, BasicConv2d):
                self.conv(name, part.conv)
                self.batch_norm(f"{name}_BatchNorm", part.bn)
                self.relu(f"{name}_Activation")
            elif isinstance(part, Conv2dTF):
                self.conv(name, part)
            elif isinstance(part, MaxPool2dTF):
                self.pool(name, part)
            elif isinstance(part, nn.Linear):
                cfg = self.config(name, "Dense")
                self.check(name, cfg, "units", part.out_features)
                self.check(name, cfg, "use_bias", False)
                self.check(name, cfg, "activation", "linear")
                with torch.no_grad():
                    part.weight.copy_(self.take(name, "kernel", (part.in_features, part.out_features)).T)
            else:  # pragma: no cover - keras_parts yields only the kinds above
                raise TypeError(f"unexpected part {name}: {type(part).__name__}")
        self.batch_norm("Bottleneck_BatchNorm", model.last_bn)
        for prefix, block in model.residual_blocks():
            self.residual(prefix, block)
        if self.h5.has_config and "Dropout" in self.h5.layers:
            model.dropout.p = float(self.config("Dropout", "Dropout").get("rate", model.dropout.p))
        unused = [f"{layer}/{w}" for layer, ws in self.h5.weights.items() for w in ws if (layer, w) not in self.used]
        if unused:
            raise self.fail(f"{len(unused)} weights left unused, e.g. {unused[:3]}")


def _norm(v: object) -> object:
    """Config values compare as lists (JSON has no tuples)."""
    return [_norm(x) for x in v] if isinstance(v, (list, tuple)) else v
