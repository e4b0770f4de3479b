"""Target ``siglip``: Google's SigLIP image encoder (transformers ``SiglipVisionModel``).

It sees the whole photo squashed to its input size (bicubic, antialiased, no crop) and normalised
with mean = std = 0.5, exactly as its Hugging Face processor prepares images, so gradients taken
here transfer to the real preprocessing.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..engine.geometry import squash
from ..engine.scene import Scene
from ..errors import ModelUnavailable
from ..weights import DEFAULT_SIGLIP, siglip_source
from .base import Target, TargetInfo
from .registry import register_target


class SiglipTarget(Target):
    info = TargetInfo(
        name="siglip",
        kind="image",
        input_size=(384, 384),
        metric="cosine",
        match_threshold=None,
        # Cosine distance 0.5 (cosine similarity 0.5 to the original): the photo's embedding is
        # nearer to unrelated photos than to itself for retrieval purposes.
        goal=0.5,
        weights=f"transformers SiglipVisionModel ({DEFAULT_SIGLIP} by default)",
    )

    def __init__(self, model: torch.nn.Module, goal: float | None = None) -> None:
        super().__init__(goal)
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        size = int(model.config.image_size)
        self.size = (size, size)

    def embed(self, scene: Scene) -> Tensor:
        x = squash(scene.whole, self.size)
        x = (x - 0.5) / 0.5
        return self.model(pixel_values=x).pooler_output


@register_target("siglip")
def create_siglip_target(
    device: torch.device | str = "cpu",
    goal: float | None = None,
    siglip_model: str = DEFAULT_SIGLIP,
    model: torch.nn.Module | None = None,
    **_: object,
) -> SiglipTarget:
    """Load SigLIP from a local folder or the hub (``HF_HUB_OFFLINE`` is honoured), or wrap ``model``."""
    if model is None:
        from transformers import SiglipVisionModel

        source = siglip_source(siglip_model)
        try:
            try:  # the local cache first: no network round trip when the weights are already here
                model = SiglipVisionModel.from_pretrained(str(source.path or siglip_model), local_files_only=True)
            except (OSError, ValueError):
                if source.path is not None or os.environ.get("HF_HUB_OFFLINE") == "1":
                    raise
                model = SiglipVisionModel.from_pretrained(siglip_model)
        except (OSError, ValueError) as e:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise ModelUnavailable(
                f"siglip ({siglip_model})",
                "not in the local Hugging Face cache" + (" and HF_HUB_OFFLINE=1" if offline else " and the hub could not be reached")
                + f" ({type(e).__name__})",
                f"Download it once with network access (python -c \"from transformers import SiglipVisionModel; "
                f"SiglipVisionModel.from_pretrained('{siglip_model}')\"), or point siglip_model at a local folder "
                "holding config.json and model.safetensors.",
            ) from None
    return SiglipTarget(model, goal).to(device)
