"""The tiny Z-Image model: written by `sdbatch models tiny --family zimage`, loaded offline as a ZImagePipeline, its
Qwen tokenizer built in code (Qwen3's chat turn, any text), deterministic, LoRAs and a ControlNet that act."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sdbatch.cli.app import app
from sdbatch.render.tiny.build import build_pipeline, is_tiny_model_dir
from tests.unit.render.tiny.test_build import go_offline

SIDE = 64  # the pipeline's own default is a constant 1024: ask for the tiny size


def render(pipe, prompt="a red cube", seed=1, **call) -> np.ndarray:
    images = pipe(prompt, num_inference_steps=2, guidance_scale=0.0, width=SIDE, height=SIDE, max_sequence_length=64,
                  generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **call).images
    return (images[0] * 255).round().astype(np.int16)


@pytest.fixture(scope="module")
def folder_and_pipes(tmp_path_factory):
    """(the folder the CLI wrote, it loaded offline, the same pipeline built in memory)."""
    from diffusers import DiffusionPipeline

    folder = tmp_path_factory.mktemp("zimage") / "model"
    result = CliRunner().invoke(app, ["models", "tiny", str(folder), "--family", "zimage"])
    assert result.exit_code == 0 and "tiny zimage model in" in result.output, result.output
    with pytest.MonkeyPatch.context() as mp:
        go_offline(mp)
        loaded = DiffusionPipeline.from_pretrained(folder)
    built = build_pipeline(0, "zimage")
    for pipe in (loaded, built):
        pipe.set_progress_bar_config(disable=True)
    return folder, loaded, built


def test_the_cli_writes_a_zimage_folder_that_loads_offline(folder_and_pipes):
    folder, loaded, _ = folder_and_pipes
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "ZImagePipeline" and is_tiny_model_dir(folder)
    assert index["text_encoder"] == ["transformers", "Qwen3Model"] and type(loaded).__name__ == "ZImagePipeline"
    assert loaded.transformer.config.cap_feat_dim == loaded.text_encoder.config.hidden_size
    assert loaded.vae.config.latent_channels == 16 and loaded.vae.config.shift_factor is not None
    assert not loaded.scheduler.config.use_dynamic_shifting and loaded.scheduler.config.shift == 3.0  # as Turbo's


def test_the_tokenizer_frames_a_prompt_as_qwen3s_chat_turn_and_reads_any_text(folder_and_pipes):
    _, loaded, _ = folder_and_pipes
    tokenizer = loaded.tokenizer
    text = tokenizer.apply_chat_template([{"role": "user", "content": "a café 🐱"}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=True)
    assert text == "<|im_start|>user\na café 🐱<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") and tokenizer.decode(ids) == text
    embeds, _ = loaded.encode_prompt(["a red cube", "a much longer prompt about a red cube"], device="cpu",
                                     do_classifier_free_guidance=False, max_sequence_length=512)
    assert embeds[0].shape[0] < embeds[1].shape[0] < 512  # each prompt's own tokens, its padding dropped
    render(loaded, prompt="a café 🐱 at dusk " * 60)  # past 512 tokens: truncated


def test_renders_deterministically_as_built_and_its_weights_depend_on_the_seed_only(folder_and_pipes):
    _, loaded, built = folder_and_pipes
    first = render(loaded)
    assert first.std() > 1.0 and np.array_equal(first, render(loaded))
    assert np.abs(first - render(built)).max() <= 1  # the folder holds what build_pipeline makes
    assert not np.array_equal(first, render(loaded, seed=2))
    assert not np.array_equal(first, render(loaded, prompt="a photo of a cat"))
    rng_before = torch.get_rng_state()
    one, again, other = (build_pipeline(seed, "zimage").transformer.state_dict() for seed in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(torch.equal(one[k], again[k]) for k in one) and not all(torch.equal(one[k], other[k]) for k in one)
    assert all(torch.isfinite(v).all() for v in one.values())  # the pad tokens too (torch.empty in diffusers)


def test_a_tiny_lora_and_controlnet_act_in_diffusers_own_pipelines(tmp_path):
    from diffusers import ZImageControlNetModel, ZImageControlNetPipeline
    from PIL import Image

    from tests.support.tiny_variants import write_tiny_controlnet, write_tiny_lora

    pipe = build_pipeline(0, "zimage")
    pipe.set_progress_bar_config(disable=True)
    base = render(pipe)
    pipe.load_lora_weights(write_tiny_lora(tmp_path / "lora.safetensors", 1, family="zimage"), "style")
    assert np.abs(render(pipe) - base).mean() > 2
    pipe.set_adapters(["style"], [0.0])
    assert np.abs(render(pipe) - base).max() <= 1
    pipe.unload_lora_weights()
    net = ZImageControlNetModel.from_pretrained(write_tiny_controlnet(tmp_path / "cn", 1, family="zimage"))
    controlled = ZImageControlNetPipeline(**pipe.components, controlnet=net)
    controlled.set_progress_bar_config(disable=True)
    edges = Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8))
    assert np.abs(render(controlled, control_image=edges, controlnet_conditioning_scale=1.0) - base).mean() > 2
