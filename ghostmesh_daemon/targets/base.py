"""The one protocol every encoder we protect against implements.

A target turns a :class:`~ghostmesh_daemon.engine.scene.Scene` into embeddings, differentiably:
``embed(scene) -> (N, D)``, one row per thing it recognises (each face for a face embedder, the whole
photo for an image encoder). The engine calls it once on the clean scene (the reference) and once per
step on the candidate. How a target crops, aligns and normalises is its own business, which is what
lets the ensemble mix models with different inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.scene import Scene


@dataclass(frozen=True)
class TargetInfo:
    """Per-model facts, kept apart from the architecture (as timm's pretrained configs are).

    ``metric`` is how the model's own users compare embeddings; ``match_threshold`` is the distance
    under which they call two inputs the same identity; ``goal`` is the default distance from the
    original at which we call a photo protected (a margin past the threshold, because JPEG and resizing
    pull the distance back; see notes/feasibility.md).
    """

    name: str
    kind: Literal["face", "image"]
    input_size: tuple[int, int]
    metric: Literal["euclidean", "cosine"]
    match_threshold: float | None
    goal: float
    weights: str


class Target(nn.Module):
    """Base class: subclasses set ``info`` and implement :meth:`embed`."""

    info: ClassVar[TargetInfo]

    def __init__(self, goal: float | None = None) -> None:
        super().__init__()
        self.goal = float(self.info.goal if goal is None else goal)

    @property
    def name(self) -> str:
        return self.info.name

    def embed(self, scene: Scene) -> Tensor:  # pragma: no cover - abstract
        """Embeddings of ``scene``, shape (N, D); N may be 0 (for example no face was found)."""
        raise NotImplementedError

    def distance(self, reference: Tensor, embedding: Tensor) -> Tensor:
        """Per-row distance in the model's own metric, shape (N,)."""
        if self.info.metric == "euclidean":
            return (embedding - reference).norm(dim=-1)
        return 1.0 - F.cosine_similarity(embedding, reference, dim=-1)

    def similarity(self, reference: Tensor, embedding: Tensor) -> Tensor:
        """Cosine similarity per row, shape (N,): the quantity the loss pushes down."""
        return F.cosine_similarity(embedding, reference, dim=-1)

    def protected(self, reference: Tensor, embedding: Tensor) -> Tensor:
        """Boolean per row: is this one past the goal?"""
        return self.distance(reference, embedding) >= self.goal

    def extra_repr(self) -> str:
        return f"name={self.info.name!r}, goal={self.goal}"


def no_rows(like: Tensor, dim: int) -> Tensor:
    """An empty (0, dim) embedding on ``like``'s device, for scenes with nothing to embed."""
    return torch.zeros((0, dim), device=like.device, dtype=like.dtype)
