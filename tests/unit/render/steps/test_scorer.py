"""Scorer: only the steps asked for load, CLIP once and its image embedding once per image, chunks change nothing."""

import numpy as np
import pytest
import torch
from PIL import Image

from sdbatch.errors import ModelLoadError
from sdbatch.render.steps import scorer as scorer_module
from sdbatch.render.steps.scorer import Scorer
from sdbatch.settings import ScoreSettings

TINY = dict(clip_model="tiny:clip", aesthetic_model="tiny:aesthetic", safety_model="tiny:safety")
ALL = ("clip", "aesthetic", "safety", "phash")


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (24 + 8 * i, 32, 3), dtype=np.uint8)) for i in range(n)]


def prompts(n: int) -> list[str]:
    return [f"prompt number {i}" for i in range(n)]


@pytest.fixture
def loads(monkeypatch, score_cache):
    """The references load_clip is called with."""
    seen, real = [], scorer_module.load_clip

    def counting(reference, device, s3=None):
        seen.append(reference)
        return real(reference, device, s3)

    monkeypatch.setattr(scorer_module, "load_clip", counting)
    return seen


def test_only_the_steps_asked_for_load(loads):
    scorer = Scorer(ScoreSettings(steps=("phash",), clip_model="/nowhere/clip", aesthetic_model="/nowhere.pth"), "cpu")
    assert loads == [] and list(scorer.identity()) == ["phash"]
    assert list(scorer.score(images(2), prompts(2))) == ["phash"] and loads == []


def test_clip_loads_once_for_every_step_that_reads_it(loads):
    scorer = Scorer(ScoreSettings(steps=("safety", "clip", "aesthetic"), **TINY), "cpu")
    assert loads == ["tiny:clip"] and list(scorer.identity()) == ["safety", "clip", "aesthetic"]
    scorer.score(images(3), prompts(3))
    assert loads == ["tiny:clip"]


def test_the_clip_image_embedding_runs_once_per_image(score_cache, monkeypatch):
    scorer = Scorer(ScoreSettings(steps=ALL, batch_size=2, **TINY), "cpu")
    model, calls = scorer.clip().model, []
    real = model.get_image_features

    def counting(pixel_values, **kwargs):
        calls.append(pixel_values.shape[0])
        return real(pixel_values=pixel_values, **kwargs)

    monkeypatch.setattr(model, "get_image_features", counting)
    out = scorer.score(images(5), prompts(5))
    assert calls == [2, 2, 1]  # 5 images in chunks of 2, each seen once for clip, aesthetic and safety together
    assert {step: {c: len(v) for c, v in columns.items()} for step, columns in out.items()} == {
        "clip": {"clip_score": 5}, "aesthetic": {"aesthetic": 5}, "safety": {"punsafe": 5}, "phash": {"phash": 5}}


def test_chunks_give_the_values_of_one_batch(score_cache):
    pictures, texts = images(5), prompts(5)
    chunked = Scorer(ScoreSettings(steps=ALL, batch_size=2, **TINY), "cpu").score(pictures, texts)
    whole = Scorer(ScoreSettings(steps=ALL, batch_size=8, **TINY), "cpu").score(pictures, texts)
    assert chunked["phash"] == whole["phash"]
    for step, column in (("clip", "clip_score"), ("aesthetic", "aesthetic"), ("safety", "punsafe")):
        assert np.allclose(chunked[step][column], whole[step][column], atol=1e-5), step


def test_values_are_per_image_in_order_and_modes_become_rgb(score_cache):
    scorer = Scorer(ScoreSettings(steps=("clip", "phash"), **TINY), "cpu")
    pictures = images(3)
    alone = [scorer.score([p], [t]) for p, t in zip(pictures, prompts(3))]
    together = scorer.score([pictures[0].convert("RGBA"), *pictures[1:]], prompts(3))
    assert together["phash"]["phash"] == [a["phash"]["phash"][0] for a in alone]
    assert np.allclose(together["clip"]["clip_score"], [a["clip"]["clip_score"][0] for a in alone], atol=1e-5)


def test_inputs_that_cannot_be_scored_are_refused(score_cache):
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        Scorer(ScoreSettings(steps=("phash",)), "cpu").score(images(2), ["one"])
    with pytest.raises(ValueError, match="unknown score step 'sharpness'"):
        Scorer(ScoreSettings(steps=("sharpness",)), "cpu")
    with pytest.raises(ModelLoadError, match="needs safety_model"):
        Scorer(ScoreSettings(steps=("safety",), clip_model="tiny:clip"), "cpu")


def test_scoring_runs_without_autograd(score_cache, monkeypatch):
    scorer = Scorer(ScoreSettings(steps=("clip",), **TINY), "cpu")
    modes = []
    real = scorer.steps["clip"].score
    monkeypatch.setattr(scorer.steps["clip"], "score", lambda batch: modes.append(torch.is_inference_mode_enabled())
                        or real(batch))
    scorer.score(images(1), prompts(1))
    assert modes == [True]
