"""The aesthetic step: LAION's improved aesthetic predictor over the normalized CLIP image embedding, exactly as its
nn.Sequential computes it, from .pth or .safetensors; files of another layout or CLIP width refused."""

import re

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdbatch.errors import ModelLoadError
from sdbatch.render.steps.scorer import Scorer
from sdbatch.render.steps.weights import file_hash
from sdbatch.settings import ScoreSettings

IMAGES = [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (64, 32), (30, 160, 90))]
WIDTHS = (1024, 128, 64, 16, 1)


def laion_mlp(dim: int) -> torch.nn.Sequential:
    """LAION's MLP class (improved-aesthetic-predictor's simple_inference.py), as a Sequential: no activations."""
    return torch.nn.Sequential(torch.nn.Linear(dim, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                               torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
                               torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))


def state(dim: int, indices=(0, 2, 4, 6, 7), seed: int = 3) -> dict:
    generator, out, width = torch.Generator().manual_seed(seed), {}, dim
    for index, width_out in zip(indices, WIDTHS):
        out[f"layers.{index}.weight"] = torch.randn(width_out, width, generator=generator) / width ** 0.5
        out[f"layers.{index}.bias"] = torch.randn(width_out, generator=generator)
        width = width_out
    return out


def scorer(path) -> Scorer:
    return Scorer(ScoreSettings(steps=("aesthetic",), clip_model="tiny:clip", aesthetic_model=str(path)), "cpu")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_the_rating_is_the_laion_mlp_over_the_normalized_embedding(tmp_path, suffix, tiny_clip,
                                                                   image_embeds_by_hand):
    weights = state(tiny_clip.embed_dim)
    path = tmp_path / f"aesthetic{suffix}"
    torch.save(weights, path) if suffix == ".pth" else save_file(weights, str(path))
    got = torch.tensor(scorer(path).score(IMAGES, ["", ""])["aesthetic"]["aesthetic"])
    x = image_embeds_by_hand(IMAGES)
    for index in (0, 2, 4, 6, 7):  # by hand: affine layers, one after another
        x = x @ weights[f"layers.{index}.weight"].T + weights[f"layers.{index}.bias"]
    assert torch.allclose(got, x[:, 0], atol=1e-5, rtol=1e-6)
    mlp = laion_mlp(tiny_clip.embed_dim)
    mlp.load_state_dict({k.removeprefix("layers."): v for k, v in weights.items()}, strict=True)
    with torch.no_grad():
        assert torch.allclose(got, mlp.eval()(image_embeds_by_hand(IMAGES))[:, 0], atol=1e-5)


def test_identity_names_the_file_its_sha256_and_the_clip(tmp_path, tiny_clip):
    path = tmp_path / "a.safetensors"
    save_file(state(tiny_clip.embed_dim), str(path))
    identity = scorer(path).identity()["aesthetic"]
    assert identity["model"] == str(path) and identity["model_hash"] == file_hash(path) and len(file_hash(path)) == 64
    assert identity["clip_model"] == "tiny:clip" and identity["clip_model_hash"] == tiny_clip.model_hash


def test_a_predictor_for_another_clip_width_is_refused_naming_file_and_shape(tmp_path, tiny_clip):
    path = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(state(768), path)
    with pytest.raises(ModelLoadError) as caught:
        scorer(path)
    message = str(caught.value)
    assert path.name in message and "768-d" in message and f"gives {tiny_clip.embed_dim}-d" in message
    assert f"{tiny_clip.embed_dim} -> 1024 -> 128 -> 64 -> 16 -> 1" in message


@pytest.mark.parametrize("weights, why", [
    (lambda d: state(d, indices=(0, 1, 2, 3, 4)), "not [0, 2, 4, 6, 7]"),
    (lambda d: {**state(d), "net.extra": torch.zeros(1)}, "unexpected tensor 'net.extra'"),
    (lambda d: {k: v for k, v in state(d).items() if k != "layers.7.bias"}, "layers.7 is not a Linear"),
])
def test_files_of_another_layout_are_refused(tmp_path, tiny_clip, weights, why):
    path = tmp_path / "a.safetensors"
    save_file(weights(tiny_clip.embed_dim), str(path))
    with pytest.raises(ModelLoadError, match=re.escape(why)):
        scorer(path)


def test_unusable_references_are_refused_with_the_fix(tmp_path, score_cache):
    pickled = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 1), pickled)  # a whole module: weights_only refuses to unpickle it
    cases = {None: "needs aesthetic_model", str(tmp_path / "none.pth"): "does not exist",
             str(tmp_path / "x.onnx"): "not a weights file", str(pickled): "could not be read as a state dict",
             "tiny:nope": "use tiny:aesthetic", "tiny:clip": "not a tiny aesthetic model"}
    for reference, why in cases.items():
        with pytest.raises(ModelLoadError, match=why):
            Scorer(ScoreSettings(steps=("aesthetic",), clip_model="tiny:clip", aesthetic_model=reference), "cpu")


def test_a_store_object_is_downloaded_through_the_fetcher(tmp_path, monkeypatch, tiny_clip):
    local = tmp_path / "copy.safetensors"
    save_file(state(tiny_clip.embed_dim), str(local))
    seen = []

    def download(self, uri, folder):
        seen.append((uri, folder.name))
        return local

    monkeypatch.setattr("sdbatch.render.variants.fetch.Fetcher.download", download)
    uri = "s3" + "://bucket/models/aesthetic.safetensors"
    assert scorer(uri).identity()["aesthetic"]["model"] == uri and seen == [(uri, "scorers")]
