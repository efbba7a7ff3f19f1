"""Model references: tiny models, local folders, hub ids offline, schedulers by name."""

import pytest
import torch

from sdbatch.a1111.samplers import SCHEDULERS
from sdbatch.errors import ModelLoadError
from sdbatch.render.models.loading import (
    load_model,
    make_scheduler,
    model_hash,
)
from sdbatch.render.models.sources import resolve_source

pytestmark = pytest.mark.usefixtures("tiny_cache")


def test_hub_id_offline_and_not_cached_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as info:
        resolve_source("nobody-here/no-such-model")
    message = str(info.value)
    assert "'nobody-here/no-such-model'" in message and "download it first" in message


def test_missing_local_folder_is_not_looked_up_on_the_hub(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist; fix the path"):
        resolve_source(str(tmp_path / "absent" / "model"))


def test_unknown_tiny_model_is_refused():
    with pytest.raises(ModelLoadError, match="tiny:sd15"):
        resolve_source("tiny:sd99")


def test_model_hash_follows_content(tmp_path):
    from sdbatch.render.tiny.build import write_tiny_model

    a, b, c = (write_tiny_model(tmp_path / n, seed=s) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    assert model_hash(a) == model_hash(b) != model_hash(c)


def test_every_named_scheduler_builds_and_renders():
    model = load_model("tiny:sd15", torch.device("cpu"), torch.float32)
    assert model.native_size == (64, 64)
    for name in SCHEDULERS:
        model.pipeline.scheduler = make_scheduler(model, name)
        out = model.pipeline(prompt=["x"], num_inference_steps=3, width=32, height=32, output_type="np",
                             generator=[torch.Generator().manual_seed(0)])
        assert out.images.shape == (1, 32, 32, 3), name
    assert make_scheduler(model, "dpmpp_2m_karras").config.use_karras_sigmas
    assert make_scheduler(model, None) is model.base_scheduler
