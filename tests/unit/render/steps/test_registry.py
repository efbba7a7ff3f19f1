"""The step registry: one factory per step sdbatch.scores knows, and each step's columns are the ones it declares."""

import torch
from PIL import Image

from sdbatch.render.steps import STEPS, ScoreBatch, StepContext
from sdbatch.scores import STEP_INFO
from sdbatch.settings import ScoreSettings


def test_the_registry_has_a_factory_for_every_step_and_no_other():
    assert list(STEPS) == list(STEP_INFO)


def test_each_step_returns_the_columns_step_info_declares(score_cache, tiny_clip):
    settings = ScoreSettings(clip_model="tiny:clip", aesthetic_model="tiny:aesthetic", safety_model="tiny:safety")
    context = StepContext(settings, torch.device("cpu"), None, lambda: tiny_clip)
    batch = ScoreBatch([Image.new("RGB", (16, 16))] * 2, ["x", "y"], tiny_clip.embed_images)
    for name, factory in STEPS.items():
        step = factory(context)
        with torch.inference_mode():
            columns = step.score(batch)
        assert step.name == name and list(columns) == [c for c, _ in STEP_INFO[name].columns]
        assert all(len(values) == 2 for values in columns.values())
