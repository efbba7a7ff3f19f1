"""The SDXL family on the tiny SDXL-style model: class from the model, text side, VAE rule, LoRA and ControlNet,
wrong-family assets, switches."""

import gc
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from sdbatch.render.renderer import Renderer
from sdbatch.settings import RendererSettings
from sdbatch.store.local import LocalStore

pytestmark = pytest.mark.usefixtures("tiny_cache")
CHANGED = 8  # out of 255: a LoRA or ControlNet moves pixels by far more than this
NOISE = 1


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from tests.support.tiny_variants import write_tiny_controlnet, write_tiny_lora

    root = tmp_path_factory.mktemp("sdxl-assets")
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "edges.png")
    return {"xl_lora": str(write_tiny_lora(root / "xl.safetensors", seed=1, family="sdxl")),
            "sd15_lora": str(write_tiny_lora(root / "sd15.safetensors", seed=1)),
            "xl_cn": str(write_tiny_controlnet(root / "cn-xl", seed=1, family="sdxl")),
            "sd15_cn": str(write_tiny_controlnet(root / "cn-sd15", seed=1)),
            "image": str(root / "edges.png")}


@pytest.fixture(scope="module")
def renderer(tmp_path_factory):
    r = Renderer(LocalStore(str(tmp_path_factory.mktemp("sdxl-out"))), RendererSettings(cpu_threads=2, io_threads=1))
    yield r
    r.close()


def _row(i, model="tiny:sdxl", loras=(), controlnets=(), image=None) -> dict:
    return {"id": f"r{i}", "prompt": "a small test picture", "negative_prompt": "", "seed": 5, "model": model,
            "width": None, "height": None, "steps": 2, "scheduler": None, "guidance_scale": 5.0,
            "loras": [{"path": p, "weight": 1.0} for p in loras],
            "controlnets": [{"model": m, "image": image, "scale": 1.0} for m in controlnets]}


def _render(renderer, *rows) -> dict:
    return {r.row["id"]: r for r in renderer.render_rows(list(rows))}


def _px(rendered) -> np.ndarray:
    assert rendered.error is None, rendered.error
    return np.asarray(rendered.image, dtype=np.int16)


def test_sdxl_class_comes_from_the_model_and_renders_at_its_native_size(renderer):
    out = _render(renderer, _row(0))
    model = renderer.model("tiny:sdxl")
    assert type(model.pipeline).__name__ == "StableDiffusionXLPipeline"
    assert (out["r0"].width, out["r0"].height) == model.native_size == (64, 64)
    assert _px(out["r0"]).std() > 1


def test_sdxl_lora_and_controlnet_change_the_image_and_wrong_family_assets_fail_their_rows(renderer, assets):
    rows = [_row(0), _row(1, loras=[assets["xl_lora"]]), _row(2, loras=[assets["sd15_lora"]]),
            _row(3, controlnets=[assets["xl_cn"]], image=assets["image"]),
            _row(4, controlnets=[assets["sd15_cn"]], image=assets["image"]), _row(5)]
    out = _render(renderer, *rows)
    base = _px(out["r0"])
    assert np.abs(_px(out["r1"]) - base).max() > CHANGED
    assert np.abs(_px(out["r3"]) - base).max() > CHANGED
    assert np.abs(_px(out["r5"]) - base).max() <= NOISE  # the LoRA and ControlNet are off again
    assert "does not fit this SDXL model (a LoRA for another model family?)" in out["r2"].error
    assert "made for SD1.x/2.x-style models, but this row's model is SDXL" in out["r4"].error
    assert type(renderer._variants.controlnets._pipeline).__name__ == "StableDiffusionXLControlNetPipeline"


def test_switching_models_frees_the_old_pipeline(tmp_path, assets):
    r = Renderer(LocalStore(str(tmp_path)), RendererSettings(cpu_threads=2, io_threads=1))
    try:
        _px(_render(r, _row(0, model="tiny:sd15", loras=[assets["sd15_lora"]]))["r0"])
        old = weakref.ref(r.model("tiny:sd15").pipeline.unet)
        _px(_render(r, _row(1, loras=[assets["xl_lora"]]))["r1"])
        gc.collect()
        assert old() is None, "the SD1.5 UNet is still referenced after the switch to SDXL"
        assert (r.model_loads, r.lora_loads) == (2, 2)
    finally:
        r.close()


def test_an_sdxl_single_file_checkpoint_renders_as_its_folder(renderer, tmp_path):
    """SDXL .safetensors files (the A1111 / SGM layout, second text encoder in OpenCLIP's layout) are what
    most SDXL checkpoints ship as: the same image as the diffusers folder they were written from."""
    from safetensors import safe_open

    from sdbatch.family import checkpoint_family
    from sdbatch.render.tiny.build import write_tiny_model
    from tests.support.checkpoints import write_single_file

    folder = write_tiny_model(tmp_path / "xl-seed1", seed=1, family="sdxl")  # not tiny:sdxl's weights
    single = write_single_file(folder, tmp_path / "xl-seed1.safetensors", config="tiny:sdxl")
    with safe_open(str(single), framework="pt") as handle:
        assert checkpoint_family(set(handle.keys())) == "sdxl"
    out = _render(renderer, _row(0, model=str(single)), _row(1, model=str(folder)), _row(2))
    assert type(renderer.model(str(single)).pipeline).__name__ == "StableDiffusionXLPipeline"
    assert np.abs(_px(out["r0"]) - _px(out["r1"])).max() <= NOISE
    assert np.abs(_px(out["r0"]) - _px(out["r2"])).max() > CHANGED  # its own weights, not the config's


def test_a_single_file_without_configs_at_hand_names_the_file_and_the_download_that_fixes_it(tmp_path,
                                                                                         monkeypatch):
    """A real SDXL .safetensors file carries no configs; they come from the family's hub repo. On an offline
    node without them the error must be about the user's file, not only a hub id they never wrote."""
    import huggingface_hub.constants
    import torch

    from sdbatch.errors import ModelLoadError
    from sdbatch.render.models.loading import load_model
    from sdbatch.render.tiny.build import write_tiny_model
    from tests.support.checkpoints import write_single_file

    single = write_single_file(write_tiny_model(tmp_path / "xl", seed=1, family="sdxl"), tmp_path / "xl.safetensors")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as info:
        load_model(str(single), torch.device("cpu"), torch.float32)
    message = str(info.value)
    assert "xl.safetensors is a single-file sdxl checkpoint" in message
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0 --include '*.json' '*.txt'" in message


def test_sdxl_reads_two_encoders_pooled_and_penultimate_and_loras_go_into_both():
    from sdbatch.family import SDXL
    from sdbatch.render.families import FAMILIES
    from sdbatch.render.tiny.build import build_pipeline

    family, pipe = FAMILIES["sdxl"], build_pipeline(0, "sdxl")
    assert family.descriptor is SDXL and family.denoiser(pipe) is pipe.unet and family.words(pipe) == "SDXL"
    text = family.text(pipe)
    assert text.encoders == ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2))
    assert text.penultimate and text.pooled and text.zero_negative
    assert family.lora_text_encoders(pipe) == ["text_encoder", "text_encoder_2"]
    state = type("C", (), {"embeds": torch.ones(1, 77, 80), "negative": torch.zeros(1, 77, 80),
                           "pooled": torch.ones(1, 48), "negative_pooled": torch.zeros(1, 48)})()
    assert set(family.text_arguments([state])) == {"prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                                                   "negative_pooled_prompt_embeds"}
    # A refiner-like pipeline has only the second encoder: it keeps its slot (embedding files are read by slot).
    pipe.text_encoder = pipe.tokenizer = None
    assert family.text(pipe).encoders == (None, (pipe.tokenizer_2, pipe.text_encoder_2))
    assert family.lora_text_encoders(pipe) == ["text_encoder_2"]


def test_sdxl_kinds_are_its_own_classes_and_its_controlnets_refuse_other_families_configs():
    from sdbatch.family import SDXL
    from sdbatch.render.families import FAMILIES
    from sdbatch.render.tiny.build import build_pipeline

    family, pipe = FAMILIES["sdxl"], build_pipeline(0, "sdxl")
    for kind in ("img2img", "inpaint"):
        derived = family.derive(pipe, kind, torch.float32)
        assert type(derived).__name__ == SDXL.pipelines.of(kind) and derived.text_encoder_2 is pipe.text_encoder_2
    config = {"addition_embed_type": "text_time", "cross_attention_dim": pipe.unet.config.cross_attention_dim}
    assert family.fits_controlnet(config, pipe)
    assert not family.fits_controlnet({"cross_attention_dim": config["cross_attention_dim"]}, pipe)  # SD's


def test_sdxl_keeps_its_vae_in_float32_under_fp16_only_where_the_vae_asks_for_it():
    from sdbatch.render.families import FAMILIES
    from sdbatch.render.tiny.build import build_pipeline

    sdxl, sd = FAMILIES["sdxl"], FAMILIES["sd1"]
    for family, dtype, force_upcast, expected in ((sdxl, torch.float16, True, torch.float32),
                                                  (sdxl, torch.float16, False, torch.float16),
                                                  (sdxl, torch.bfloat16, True, torch.bfloat16),
                                                  (sd, torch.float16, True, torch.float16)):
        vae = build_pipeline(0, "sdxl").vae.to(dtype)
        vae.register_to_config(force_upcast=force_upcast)
        family.prepare_vae(vae, dtype)
        assert vae.dtype == expected, (family.descriptor.name, dtype, force_upcast)
