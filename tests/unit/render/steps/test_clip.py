"""The clip step and the shared CLIP: a CLIP trained here to tell red from blue scores matching prompts higher, the
score is transformers' own cosine, and references that cannot be a CLIP are refused with the fix."""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPModel

from sdbatch.errors import ModelLoadError
from sdbatch.render.models.loading import model_hash
from sdbatch.render.steps.clip import clip_dtype, image_processor_class, load_clip
from sdbatch.render.steps.scorer import Scorer
from sdbatch.render.tiny.scorers import build_clip, processor_config, save_clip
from sdbatch.settings import ScoreSettings
from tests.unit.render.steps.conftest import features

RED, BLUE = Image.new("RGB", (48, 40), (220, 20, 20)), Image.new("RGB", (40, 48), (20, 20, 220))
LONG = "a red " + "very " * 120 + "thing"  # beyond 77 tokens: truncated, not refused


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CLIP folder (seed 1) fine-tuned with CLIP's contrastive loss on red/blue images and prompts."""
    folder = tmp_path_factory.mktemp("clip") / "trained"
    folder.mkdir()
    (folder / "preprocessor_config.json").write_text(json.dumps(processor_config()))
    model, tokenizer = build_clip(seed=1)
    pixels = image_processor_class().from_pretrained(folder)(images=[RED, BLUE], return_tensors="pt")["pixel_values"]
    tokens = tokenizer(["red", "blue"], padding=True, return_tensors="pt")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(40):
            optimizer.zero_grad()
            model(**tokens, pixel_values=pixels, return_loss=True).loss.backward()
            optimizer.step()
    return save_clip(model.eval(), tokenizer, folder)


def clip_scores(folder, prompts, images=(RED, BLUE)):
    scorer = Scorer(ScoreSettings(steps=("clip",), clip_model=str(folder)), "cpu")
    return scorer.score(list(images), prompts)["clip"]["clip_score"]


def test_a_prompt_that_matches_its_image_scores_higher_than_the_swapped_prompt(trained):
    matched, swapped = clip_scores(trained, ["red", "blue"]), clip_scores(trained, ["blue", "red"])
    assert all(m > s + 0.2 for m, s in zip(matched, swapped)), (matched, swapped)
    assert all(-1 <= v <= 1 for v in matched + swapped)


def test_the_score_is_the_cosine_of_transformers_image_and_text_features(trained):
    prompts = ["red", LONG]
    got = torch.tensor(clip_scores(trained, prompts))
    model = CLIPModel.from_pretrained(trained).eval()
    tokenizer, processor = AutoTokenizer.from_pretrained(trained), image_processor_class().from_pretrained(trained)
    with torch.no_grad():
        image = features(model.get_image_features(**processor(images=[RED, BLUE], return_tensors="pt")))
        text = features(model.get_text_features(**tokenizer(prompts, padding=True, truncation=True, max_length=77,
                                                             return_tensors="pt")))
    assert torch.allclose(got, torch.nn.functional.cosine_similarity(image, text), atol=1e-5)


def test_identity_names_the_model_its_hash_and_class(trained):
    identity = Scorer(ScoreSettings(steps=("clip",), clip_model=str(trained)), "cpu").identity()
    assert identity == {"clip": {"model": str(trained), "model_hash": model_hash(trained), "class": "CLIPModel",
                                 "dtype": "float32"}}


def test_half_precision_on_cuda_and_float32_on_cpu():
    assert clip_dtype(torch.device("cuda")) == torch.float16 and clip_dtype(torch.device("cpu")) == torch.float32


def test_tiny_clip_embeds_into_its_projection_space(tiny_clip):
    embeds = tiny_clip.embed_images([RED, BLUE, RED])
    assert embeds.shape == (3, tiny_clip.embed_dim) and embeds.dtype == torch.float32
    assert torch.allclose(embeds.norm(dim=-1), torch.ones(3), atol=1e-5) and torch.allclose(embeds[0], embeds[2], atol=1e-6)


def test_references_that_are_not_a_clip_folder_are_refused_with_the_fix(tmp_path, score_cache):
    other = tmp_path / "t5"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "t5"}))
    single = tmp_path / "clip.safetensors"
    single.write_bytes(b"x")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "clip"}))  # no weights
    cases = {str(tmp_path / "missing"): "does not exist", str(other): "'t5' model, not CLIP",
             str(single): "single file", "tiny:sd15": "use tiny:clip", str(broken): "failed to load"}
    for reference, why in cases.items():
        with pytest.raises(ModelLoadError) as caught:
            load_clip(reference, torch.device("cpu"))
        assert reference in str(caught.value) and why in str(caught.value), str(caught.value)
