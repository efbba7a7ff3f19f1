"""The tiny score models: written once per node into the sdbatch cache, offline, reused, never half written."""

import pytest
import torch
from safetensors.torch import load_file

from sdbatch.errors import ModelLoadError
from sdbatch.render.tiny import scorers
from sdbatch.render.tiny.scorers import PROJECTION, aesthetic_state, build_clip, tiny_scorer_path
from tests.unit.render.tiny.test_build import go_offline


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SDBATCH_CACHE", str(tmp_path))
    go_offline(monkeypatch)
    return tmp_path


def test_each_tiny_scorer_is_written_once_and_then_reused(cache, monkeypatch):
    paths = {name: tiny_scorer_path(name) for name in scorers.NAMES}
    assert paths["clip"] == cache / "models" / "tiny-clip-v1"
    assert {p.name for p in paths["clip"].iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                           "preprocessor_config.json"}
    assert paths["aesthetic"] == cache / "models" / "tiny-aesthetic-v1" / "aesthetic.safetensors"
    assert load_file(str(paths["safety"]))["layers.0.weight"].shape == (32, PROJECTION)

    def no_rewrite(*args, **kwargs):
        raise AssertionError("a complete tiny scorer was written again")

    monkeypatch.setattr(scorers, "_write", no_rewrite)
    assert {name: tiny_scorer_path(name) for name in scorers.NAMES} == paths
    assert not list((cache / "models").glob(".*.tmp"))


def test_tiny_clip_loads_offline_as_a_clip_model(cache):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    folder = tiny_scorer_path("clip")
    model = CLIPModel.from_pretrained(folder)
    assert model.config.projection_dim == PROJECTION and model.config.vision_config.image_size == 32
    assert AutoTokenizer.from_pretrained(folder).model_max_length == model.config.text_config.max_position_embeddings
    assert AutoImageProcessor.from_pretrained(folder).crop_size == {"height": 32, "width": 32}
    built, _ = build_clip(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), built.state_dict().values()))


def test_weights_come_from_the_seed_alone():
    first, again, other = aesthetic_state(0), aesthetic_state(0), aesthetic_state(1)
    assert list(first) == [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["layers.0.weight"], other["layers.0.weight"])


def test_a_failed_write_leaves_nothing_behind(cache, monkeypatch):
    def crash(folder, name, seed):
        (folder / "half.bin").write_bytes(b"x")
        raise OSError("disk full")

    monkeypatch.setattr(scorers, "_write", crash)
    with pytest.raises(OSError, match="disk full"):
        tiny_scorer_path("safety")
    assert [p.name for p in (cache / "models").iterdir()] == ["tiny-safety-v1.lock"]


def test_an_unknown_tiny_scorer_is_refused(cache):
    with pytest.raises(ModelLoadError, match="tiny:clip, tiny:aesthetic, tiny:safety"):
        tiny_scorer_path("sd15")
