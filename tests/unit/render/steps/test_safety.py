"""The safety step: sigmoid of a ReLU Linear stack over the normalized CLIP image embedding, layers in numeric index
order; values in [0, 1]; stacks that cannot be such a classifier refused."""

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdbatch.errors import ModelLoadError
from sdbatch.render.steps.scorer import Scorer
from sdbatch.settings import ScoreSettings

IMAGES = [Image.new("RGB", (32, 32), (250, 200, 180)), Image.new("RGB", (50, 30), (10, 10, 10)),
          Image.new("RGB", (30, 50), (90, 140, 200))]


def state(dim: int, layers=((0, 6), (2, 5), (10, 1)), seed: int = 5, scale: float = 3.0) -> dict:
    """Linear layers at `layers` (index, width); 10 after 2 as numbers, before it as strings."""
    generator, out, width = torch.Generator().manual_seed(seed), {}, dim
    for index, width_out in layers:
        out[f"layers.{index}.weight"] = scale * torch.randn(width_out, width, generator=generator) / width ** 0.5
        out[f"layers.{index}.bias"] = torch.randn(width_out, generator=generator)
        width = width_out
    return out


def scorer(path) -> Scorer:
    return Scorer(ScoreSettings(steps=("safety",), clip_model="tiny:clip", safety_model=str(path)), "cpu")


def test_punsafe_is_the_sigmoid_of_the_relu_stack(tmp_path, tiny_clip, image_embeds_by_hand):
    weights = state(tiny_clip.embed_dim)
    path = tmp_path / "safety.pth"
    torch.save(weights, path)
    got = torch.tensor(scorer(path).score(IMAGES, ["", "", ""])["safety"]["punsafe"])
    x = image_embeds_by_hand(IMAGES)
    x = torch.relu(x @ weights["layers.0.weight"].T + weights["layers.0.bias"])
    x = torch.relu(x @ weights["layers.2.weight"].T + weights["layers.2.bias"])
    logit = (x @ weights["layers.10.weight"].T + weights["layers.10.bias"])[:, 0]
    assert torch.allclose(got, torch.sigmoid(logit), atol=1e-6)
    assert ((got >= 0) & (got <= 1)).all() and len(set(got.tolist())) == 3


def test_tiny_safety_gives_probabilities(score_cache):
    settings = ScoreSettings(steps=("safety",), clip_model="tiny:clip", safety_model="tiny:safety")
    values = Scorer(settings, "cpu").score(IMAGES, ["a", "b", "c"])["safety"]["punsafe"]
    assert len(values) == 3 and all(0 <= v <= 1 for v in values)


@pytest.mark.parametrize("layers, why", [
    (((0, 6), (1, 2)), "does not end in one output"),
    (((0, 6), (1, 5), (2, 1)), "ok"),
])
def test_a_stack_must_end_in_one_logit(tmp_path, tiny_clip, layers, why):
    path = tmp_path / "s.safetensors"
    save_file(state(tiny_clip.embed_dim, layers), str(path))
    if why == "ok":
        assert scorer(path).identity()["safety"]["class"] == "ClipLinearReluSigmoid"
    else:
        with pytest.raises(ModelLoadError, match=why):
            scorer(path)


def test_mismatched_widths_are_refused(tmp_path, tiny_clip):
    weights = state(tiny_clip.embed_dim)
    weights["layers.2.weight"] = torch.zeros(5, 7)
    path = tmp_path / "s.safetensors"
    save_file(weights, str(path))
    with pytest.raises(ModelLoadError, match="layers.2 takes 7 inputs but the layer before gives 6"):
        scorer(path)


def test_a_classifier_for_another_clip_is_refused(tmp_path, tiny_clip):
    path = tmp_path / "nsfw-l14.safetensors"
    save_file(state(768), str(path))
    with pytest.raises(ModelLoadError, match=f"nsfw-l14.safetensors.*768-d.*gives {tiny_clip.embed_dim}-d"):
        scorer(path)
