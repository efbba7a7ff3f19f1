"""The render families' registry against the descriptors, and a model of no family refused at the actor's warm-up
with the families sdbatch renders, before any weight is read."""

import diffusers
import pytest
import torch

from sdbatch import family as descriptors
from sdbatch.errors import ModelLoadError
from sdbatch.render.families import FAMILIES, for_model, for_pipeline_class
from sdbatch.render.models.loading import load_model
from sdbatch.render.tiny.build import FAMILIES as TINY
from sdbatch.render.tiny.build import build_pipeline
from tests.support.model_files import UNSUPPORTED_CLASS, write_unsupported_model


def test_every_descriptor_has_its_render_family_its_classes_in_diffusers_and_its_tiny_model():
    assert {name: family.descriptor for name, family in FAMILIES.items()} == {f.name: f for f in descriptors.FAMILIES}
    for family in descriptors.FAMILIES:
        assert all(hasattr(diffusers, name) for name in family.class_names()), family.name
        assert for_pipeline_class(family.pipelines.txt2img) is FAMILIES[family.name]
    assert set(TINY) == {f.tiny for f in descriptors.FAMILIES}
    assert [for_model(build_pipeline(0, name)).descriptor.tiny for name in TINY] == list(TINY)


def _refusal(message: str, folder) -> None:
    assert f"model '{folder}' is a {UNSUPPORTED_CLASS}, which sdbatch does not render" in message
    for family in descriptors.FAMILIES:
        assert f"{family.title} ({family.pipelines.txt2img}," in message


@pytest.mark.usefixtures("tiny_cache")
def test_a_model_of_no_family_is_refused_at_warm_up_before_its_weights_are_read(tmp_path, monkeypatch):
    from sdbatch.render.renderer import Renderer
    from sdbatch.settings import RendererSettings
    from sdbatch.store.local import LocalStore

    def never(*args, **kwargs):
        raise AssertionError("the weights were read")

    unsupported = write_unsupported_model(tmp_path / "pixart")
    monkeypatch.setattr(getattr(diffusers, UNSUPPORTED_CLASS), "from_pretrained", never)
    with pytest.raises(ModelLoadError) as info:  # not AttributeError: '...Pipeline' object has no attribute 'unet'
        load_model(str(unsupported), torch.device("cpu"), torch.float32)
    _refusal(str(info.value), unsupported)
    renderer = Renderer(LocalStore(str(tmp_path)), RendererSettings(cpu_threads=1, io_threads=1))
    try:
        row = {"id": "f", "prompt": "a fox", "seed": 1, "model": str(unsupported), "width": None, "height": None,
               "steps": 2, "scheduler": None, "guidance_scale": 3.5, "loras": [], "controlnets": []}
        with pytest.raises(ModelLoadError) as info:  # the shard's model cannot load: the shard fails, not a row
            list(renderer.render_rows([row]))
        _refusal(str(info.value), unsupported)
        assert renderer.model_loads == 0 and renderer.resident()["model"] is None
    finally:
        renderer.close()
