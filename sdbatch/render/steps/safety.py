"""The safety step: punsafe, a probability from a classifier over the L2-normalized CLIP image embedding; recorded
only, it never changes or drops an image.

The classifier is a state dict of Linear layers `layers.{i}.weight/bias` (in numeric index order; gaps allowed, as
where Dropout layers were), ReLU between consecutive layers, one logit at the end: punsafe = sigmoid(logit). That is
the shape of LAION's CLIP-based NSFW detector (an Autokeras model over ViT-L/14 embeddings) once converted to torch:
its Dense layers as layers.{i}, its input Normalization ((x - mean) / std) folded into the first Linear layer
(W / std, b - W @ (mean / std)), its final sigmoid applied here. diffusers' StableDiffusionSafetyChecker (concept
embeddings and thresholds over the vision tower, not one logit) is not supported yet.
"""

from __future__ import annotations

import torch

from sdbatch.render.steps.protocol import ScoreBatch, StepContext
from sdbatch.render.steps.weights import EmbeddingHead, Layers, check_input, linear_layers, run_layers


def expected(dim: int) -> str:
    return f"Linear layers.{{i}}.weight/bias taking {dim}-d CLIP embeddings, ReLU between, ending in 1 logit"


def safety_layers(state: dict, where: str, clip) -> Layers:
    layout = expected(clip.embed_dim)
    _, layers = linear_layers(state, where, layout)
    check_input(where, layers, clip, layout)
    return layers


class SafetyStep(EmbeddingHead):
    """punsafe: sigmoid of the classifier's logit, in [0, 1]."""

    name, setting, kind = "safety", "safety_model", "ClipLinearReluSigmoid"

    def layers_of(self, state: dict, where: str, clip) -> Layers:
        return safety_layers(state, where, clip)

    def score(self, batch: ScoreBatch) -> dict[str, list]:
        logits = run_layers(self.layers, batch.image_embeds(), torch.relu)[:, 0]
        return {"punsafe": torch.sigmoid(logits).cpu().tolist()}


def make(context: StepContext) -> SafetyStep:
    return SafetyStep(context)
