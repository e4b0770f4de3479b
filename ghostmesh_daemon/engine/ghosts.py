"""Ghost networks: each optimizer step sees a slightly different copy of every target model.

A perturbation tuned to one network's exact features overfits them: another recognizer, trained
differently, does not share them. Li et al. ("Learning Transferable Adversarial Examples via Ghost
Networks", AAAI 2020) made many virtual models out of one by dropping a small random share of every
layer's outputs afresh each step (dropout erosion), so that the perturbation has to work for all of them;
that is surrogate augmentation without training anything.

Our four face networks run on four runtimes (dlib's layers, a TF.js graph executor, a Keras port, an
ONNX port), but every convolution in them is ``torch.nn.functional.conv2d``. So the erosion is a
:class:`~torch.overrides.TorchFunctionMode` around the models' forward pass that drops units of every
convolution's output: one place, no model touched, gone when the ``with`` block ends. It uses torch's
global generator, which :func:`~ghostmesh_daemon.engine.optimize.protect_image` seeds, so a run is
repeatable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_CONVOLUTIONS = {torch.conv2d, F.conv2d}


class FeatureDropout(TorchFunctionMode):
    """Within ``with FeatureDropout(p):`` every 2-D convolution's output has each unit dropped with
    probability ``p`` (the rest scaled by 1 / (1 - p), as dropout does, so a layer's mean is kept)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"feature dropout must be in [0, 1), got {p!r}")
        self.p = float(p)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _CONVOLUTIONS and self.p > 0:
            out = F.dropout(out, self.p, training=True)
        return out
