"""The aesthetic step: LAION's improved aesthetic predictor, an MLP over the L2-normalized CLIP image embedding.

The published sac+logos+ava1-l14-linearMSE.pth is an nn.Sequential's state dict: Linear layers at indices 0, 2, 4,
6, 7 (768 -> 1024 -> 128 -> 64 -> 16 -> 1), Dropout at 1, 3, 5, and no activation functions (so defined by LAION:
the stack is affine). It was trained on CLIP ViT-L/14's embeddings; a safetensors copy with the same keys works too.
"""

from __future__ import annotations

from sdbatch.errors import ModelLoadError
from sdbatch.render.steps.protocol import ScoreBatch, StepContext
from sdbatch.render.steps.weights import EmbeddingHead, Layers, check_input, linear_layers, run_layers

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


class AestheticStep(EmbeddingHead):
    """aesthetic: the predictor's rating (about 1 to 10 on LAION's scale) of each image."""

    name, setting, kind = "aesthetic", "aesthetic_model", "LAIONAestheticMLP"

    def layers_of(self, state: dict, where: str, clip) -> Layers:
        return aesthetic_layers(state, where, clip)

    def score(self, batch: ScoreBatch) -> dict[str, list]:
        return {"aesthetic": run_layers(self.layers, batch.image_embeds())[:, 0].cpu().tolist()}


def make(context: StepContext) -> AestheticStep:
    return AestheticStep(context)
