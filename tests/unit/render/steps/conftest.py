"""Fixtures of the score step tests: the session's sdbatch cache (tiny score models built there, offline), tiny:clip."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def score_cache(tiny_cache):
    """The session's sdbatch cache (tests/conftest.py): tiny:clip and friends are built there, offline."""
    return str(tiny_cache)


@pytest.fixture(scope="session")
def tiny_clip(score_cache):
    """tiny:clip loaded on the CPU (float32)."""
    import torch

    from sdbatch.render.steps.clip import load_clip

    return load_clip("tiny:clip", torch.device("cpu"))


def features(out):
    """The projected embedding from get_image_features / get_text_features (a tensor in transformers 4, a model
    output's pooler_output in 5)."""
    import torch

    return out if torch.is_tensor(out) else out.pooler_output


@pytest.fixture(scope="session")
def image_embeds_by_hand(tiny_clip):
    """images -> L2-normalized CLIP image embeddings, computed here with transformers directly (not the step code)."""
    import torch

    def embeds(images):
        pixels = tiny_clip.processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            x = features(tiny_clip.model.get_image_features(pixel_values=pixels)).float()
        return x / x.norm(dim=-1, keepdim=True)

    return embeds
