"""The SD1.x/2.x render family on the tiny SD1.5-style model: what it reads from a pipeline and the pipelines it builds."""

import json

import pytest
import torch

from sdbatch.family import SD1, model_class
from sdbatch.render.families import FAMILIES, config_words
from sdbatch.render.tiny.build import build_pipeline
from sdbatch.settings import FastPath

SD = FAMILIES["sd1"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def base():
    return build_pipeline(0, "sd15")


@pytest.fixture(scope="module")
def controlnet(tmp_path_factory):
    from tests.support.tiny_variants import write_tiny_controlnet

    folder = write_tiny_controlnet(tmp_path_factory.mktemp("cn") / "cn", seed=1)
    return folder, json.loads((folder / "config.json").read_text())


def _shares_modules(derived, base) -> bool:
    return all(getattr(derived, name) is getattr(base, name) for name in ("unet", "vae", "text_encoder", "tokenizer"))


def test_the_family_reads_the_denoiser_size_text_side_and_lora_targets_from_the_pipeline(base):
    assert SD.descriptor is SD1 and SD.denoiser(base) is base.unet
    assert SD.native_size(base) == (64, 64)  # 32 latents times the tiny VAE's 2
    text = SD.text(base)
    assert text.encoders == ((base.tokenizer, base.text_encoder),)
    assert not (text.penultimate or text.pooled or text.zero_negative)
    assert SD.lora_text_encoders(base) == ["text_encoder"] and SD.denoiser_lora_prefix == "unet"
    states = [type("C", (), {"embeds": torch.ones(1, 77, 32), "negative": torch.zeros(1, 77, 32)})()] * 2
    assert {k: tuple(v.shape) for k, v in SD.text_arguments(states).items()} == {
        "prompt_embeds": (2, 77, 32), "negative_prompt_embeds": (2, 77, 32)}
    latents = SD.resize_latents(base, torch.randn(1, 4, 32, 32), (64, 64), (96, 80))
    assert tuple(latents.shape) == (1, 4, 40, 48)  # (height, width) / the VAE's factor 2


def test_the_family_in_words_follows_the_text_width_as_messages_have_it(base):
    assert SD.words(base) == "SD1.x/2.x-style"  # the tiny model's 32-wide CLIP is neither version's
    assert [SD.words_for_config({"cross_attention_dim": d}) for d in (768, 1024)] == ["SD1.x", "SD2.x"]
    assert config_words({"cross_attention_dim": 768}) == "SD1.x"
    assert config_words({"cross_attention_dim": 2048, "addition_embed_type": "text_time"}) == "SDXL"
    assert config_words({"in_channels": 64}) == "another model family's"  # a transformer: no family here claims it


def test_each_kind_is_the_descriptors_class_over_the_same_modules(base, controlnet):
    for kind in ("img2img", "inpaint"):
        derived = SD.derive(base, kind, torch.float32)
        assert type(derived).__name__ == SD1.pipelines.of(kind) and _shares_modules(derived, base)
    net = SD.load_controlnet(controlnet[0], torch.float32)
    with_net = SD.with_controlnets(base, [net], torch.float32)
    assert type(with_net).__name__ == "StableDiffusionControlNetPipeline" and with_net.controlnet is net
    for kind in ("img2img", "inpaint"):
        derived = SD.derive(with_net, kind, torch.float32)
        assert type(derived).__name__ == SD1.controlnet_pipelines.of(kind) and derived.controlnet is net
        assert _shares_modules(derived, base)
    assert type(SD.with_controlnets(base, [net, net], torch.float32).controlnet).__name__ == "MultiControlNetModel"


def test_a_controlnet_fits_when_its_config_is_this_familys_at_the_same_text_width(base, controlnet):
    config = controlnet[1]
    assert SD.fits_controlnet(config, base)
    assert not SD.fits_controlnet({**config, "cross_attention_dim": 768}, base)  # an SD1.5 one on the tiny model
    assert not SD.fits_controlnet({**config, "addition_embed_type": "text_time"}, base)  # SDXL's


def test_deriving_keeps_a_module_held_at_another_precision_as_it_was(base):
    """diffusers' from_pipe casts every shared module to the dtype it is given: a VAE kept in float32 under fp16
    (SDXL's rule) would be cast down for the base pipeline too."""
    from diffusers import StableDiffusionImg2ImgPipeline

    half = build_pipeline(0, "sd15").to(torch.float16)
    half.vae.to(torch.float32)
    derived = SD.derive(half, "img2img", torch.float16)
    assert (derived.vae.dtype, half.vae.dtype, derived.unet.dtype) == (torch.float32, torch.float32, torch.float16)
    plain = StableDiffusionImg2ImgPipeline.from_pipe(half, dtype=torch.float16)
    assert plain.vae.dtype == half.vae.dtype == torch.float16  # what the family's derive undoes


def test_the_fast_path_and_compile_act_on_the_denoiser_in_place(monkeypatch):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    pipe = build_pipeline(0, "sd15")
    pipe.unet.set_attn_processor(AttnProcessor())
    SD.optimize(pipe, FastPath(channels_last=True), CPU, torch.float32)
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.dtype == torch.float32  # SD's VAE takes fp16 as it is: no rule here
    calls = []
    monkeypatch.setattr(type(pipe.unet), "compile", lambda self, **kw: calls.append((self, kw)))
    SD.compile(pipe, FastPath())
    SD.compile(pipe, FastPath(compile=True, compile_mode="max-autotune"))
    assert calls == [(pipe.unet, {"mode": "max-autotune"})]  # in place: pipe.unet stays the module LoRAs load into


@pytest.mark.usefixtures("tiny_cache")
def test_a_single_file_is_of_the_family_its_tensors_name_on_the_driver_and_in_the_loaded_model(tmp_path):
    from sdbatch.render.models.loading import load_model
    from tests.support.model_files import write_models

    single = write_models(tmp_path)["single"]
    assert model_class(single) == "StableDiffusionPipeline"  # its header, read without torch
    loaded = load_model(str(single), CPU, torch.float32)
    assert loaded.family is SD and loaded.native_size == (64, 64)
