"""ScoreBatch: the CLIP image embedding computed on first use and shared; none without a CLIP."""

import pytest
import torch
from PIL import Image

from sdbatch.render.steps.protocol import ScoreBatch


def test_the_image_embedding_is_computed_once_and_shared():
    calls = []

    def embed(images):
        calls.append(len(images))
        return torch.ones(len(images), 4)

    batch = ScoreBatch([Image.new("RGB", (8, 8))] * 3, ["a", "b", "c"], embed)
    first = batch.image_embeds()
    assert batch.image_embeds() is first and calls == [3]


def test_a_batch_without_clip_refuses_to_embed():
    with pytest.raises(RuntimeError, match="no CLIP"):
        ScoreBatch([Image.new("RGB", (8, 8))], ["a"]).image_embeds()
