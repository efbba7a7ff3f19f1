"""The aesthetic step: LAION's improved aesthetic predictor, an MLP over the L2-normalized CLIP image embedding.

The published sac+logos+ava1-l14-linearMSE.pth is an nn.Sequential's state dict: Linear layers at indices 0, 2, 4,
6, 7 (768 -> 1024 -> 128 -> 64 -> 16 -> 1), Dropout at 1, 3, 5, and no activation functions (so defined by LAION:
the stack is affine). It was trained on CLIP ViT-L/14's embeddings; a safetensors copy with the same keys works too.
"""

from __future__ import annotations

from typing import Any

from sdbatch.errors import ModelLoadError
from sdbatch.render.steps.protocol import ScoreBatch, StepContext
from sdbatch.render.steps.weights import (
    Layers,
    check_input,
    file_hash,
    linear_layers,
    load_state,
    model_file,
    run_layers,
)

INDICES = [0, 2, 4, 6, 7]


def expected(dim: int) -> str:
    return (f"LAION's improved aesthetic predictor: Linear layers.0/2/4/6/7, {dim} -> 1024 -> 128 -> 64 -> 16 -> 1 "
            "(sac+logos+ava1-l14-linearMSE.pth for CLIP ViT-L/14)")


def aesthetic_layers(state: dict, where: str, clip) -> Layers:
    """The predictor's Linear layers, refused unless laid out as LAION's and sized for `clip`'s embeddings."""
    layout = expected(clip.embed_dim)
    indices, layers = linear_layers(state, where, layout)
    if indices != INDICES:
        raise ModelLoadError(f"{where} has Linear layers at {indices}, not {INDICES}; expected {layout}")
    check_input(where, layers, clip, layout)
    return layers


class AestheticStep:
    """aesthetic: the predictor's rating (about 1 to 10 on LAION's scale) of each image."""

    name = "aesthetic"

    def __init__(self, reference: str, layers: Layers, model_hash: str, clip):
        self.reference, self.model_hash, self.clip = reference, model_hash, clip
        self.layers = [(w.to(clip.device), b.to(clip.device)) for w, b in layers]

    def identity(self) -> dict[str, Any]:
        return {"model": self.reference, "model_hash": self.model_hash, "class": "LAIONAestheticMLP",
                "clip_model": self.clip.reference, "clip_model_hash": self.clip.model_hash}

    def score(self, batch: ScoreBatch) -> dict[str, list]:
        return {"aesthetic": run_layers(self.layers, batch.image_embeds())[:, 0].cpu().tolist()}


def make(context: StepContext) -> AestheticStep:
    reference = context.settings.aesthetic_model
    path = model_file("aesthetic_model", reference, context.s3, "aesthetic")
    clip = context.clip()
    where = f"aesthetic_model {reference!r} ({path.name})"
    layers = aesthetic_layers(load_state("aesthetic_model", reference, path), where, clip)
    return AestheticStep(reference, layers, file_hash(path), clip)
