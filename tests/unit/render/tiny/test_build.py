"""Tests for the tiny offline Stable Diffusion model writer."""

import shutil
import socket
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sdbatch.render.tiny.build import is_tiny_model_dir, write_tiny_model

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def no_network(*args, **kwargs):
    raise AssertionError("tiny model loading tried to reach the network")


def go_offline(mp: pytest.MonkeyPatch) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE at import time, so the env var alone proves little
    # if it was imported earlier; refusing sockets proves nothing is fetched either way.
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    mp.setattr(socket.socket, "connect", no_network)
    mp.setattr(socket, "create_connection", no_network)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def pipe(model_dir):
    from diffusers import StableDiffusionPipeline

    with pytest.MonkeyPatch.context() as mp:
        go_offline(mp)
        pipeline = StableDiffusionPipeline.from_pretrained(model_dir)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def render(pipe, prompt="a red cube", seed=1, steps=2, **kwargs):
    generator = torch.Generator("cpu").manual_seed(seed)
    image = pipe(prompt, num_inference_steps=steps, generator=generator, **kwargs).images[0]
    return image, np.asarray(image)


def test_loads_offline_as_plain_sd_pipeline(pipe):
    assert pipe.safety_checker is None
    assert pipe.feature_extractor is None
    assert pipe.config.requires_safety_checker is False
    assert pipe.vae_scale_factor == 2
    assert pipe.text_encoder.config.max_position_embeddings == pipe.tokenizer.model_max_length


def test_generic_diffusion_pipeline_loads_offline(model_dir, monkeypatch):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    go_offline(monkeypatch)
    assert isinstance(DiffusionPipeline.from_pretrained(model_dir), StableDiffusionPipeline)


def test_renders_non_constant_64px_image(pipe):
    image, pixels = render(pipe)
    assert image.size == (64, 64)
    assert image.mode == "RGB"
    assert pixels.std() > 1.0


def test_same_seed_same_pixels_other_seed_differs(pipe):
    _, first = render(pipe, seed=1)
    _, again = render(pipe, seed=1)
    _, other = render(pipe, seed=2)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_prompt_reaches_the_image(pipe):
    _, cube = render(pipe, prompt="a red cube")
    _, cat = render(pipe, prompt="a photo of a cat")
    assert not np.array_equal(cube, cat)


def test_non_square_size(pipe):
    image, _ = render(pipe, width=48, height=32)
    assert image.size == (48, 32)


def test_unicode_prompt_tokenizes_without_unknowns(pipe):
    tok = pipe.tokenizer
    ids = tok("a café 🐱 at dusk").input_ids
    # unk and eos share one id, so an unknown symbol would show up as an early eos.
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.eos_token_id not in ids[1:-1]
    assert max(ids) < pipe.text_encoder.config.vocab_size
    render(pipe, prompt="a café 🐱 at dusk " * 40)  # far past 77 tokens: truncated, not an error


def test_same_seed_same_weights(tmp_path):
    rng_before = torch.get_rng_state()
    first = load_file(write_tiny_model(tmp_path / "a", seed=0) / UNET_WEIGHTS)
    second = load_file(write_tiny_model(tmp_path / "b", seed=0) / UNET_WEIGHTS)
    other = load_file(write_tiny_model(tmp_path / "c", seed=1) / UNET_WEIGHTS)
    assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG left alone
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_existing_model_is_not_rewritten(model_dir):
    stamp = (model_dir / UNET_WEIGHTS).stat().st_mtime_ns
    assert write_tiny_model(model_dir, seed=0) == model_dir
    assert (model_dir / UNET_WEIGHTS).stat().st_mtime_ns == stamp


def test_leaves_no_staging_folders(tmp_path):
    write_tiny_model(tmp_path / "model")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_empty_or_missing_folder_is_not_a_model(tmp_path):
    assert not is_tiny_model_dir(tmp_path / "missing")
    assert not is_tiny_model_dir(tmp_path)
    (tmp_path / "model_index.json").write_text("{}")
    assert not is_tiny_model_dir(tmp_path)


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_partial_folder_is_not_a_model(model_dir, tmp_path, damage):
    copy = shutil.copytree(model_dir, tmp_path / "copy")
    assert is_tiny_model_dir(copy)
    weights = copy / UNET_WEIGHTS
    if damage == "delete":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:1000])
    assert not is_tiny_model_dir(copy)


def test_fills_an_empty_folder_but_never_clobbers_others(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_tiny_model_dir(write_tiny_model(empty))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_tiny_model(occupied)
    assert (occupied / "notes.txt").read_text() == "keep me"


def test_report_render_time(pipe, capsys):
    """Reports, without asserting, how long a 64x64 render takes on this machine."""
    render(pipe)  # warm-up
    timings = {}
    for steps in (2, 10):
        start = time.perf_counter()
        render(pipe, steps=steps)
        timings[steps] = time.perf_counter() - start
    with capsys.disabled():
        print("\ntiny 64x64 render: " + ", ".join(f"{s} steps {t:.3f}s" for s, t in timings.items()))


def test_tiny_lora_and_controlnet_are_deterministic_per_seed(tmp_path):
    from safetensors import safe_open

    from tests.support.tiny_variants import write_tiny_controlnet, write_tiny_lora

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def lora(name, seed):
        path = write_tiny_lora(tmp_path / f"{name}.safetensors", seed)
        with safe_open(path, framework="pt") as handle:  # not the bytes: safetensors orders the header freely
            return load_file(path), handle.metadata()

    (first, meta), (again, meta_again), (other, _) = lora("a", 1), lora("again", 1), lora("other", 2)
    assert same(first, again) and meta == meta_again and not same(first, other)
    nets = [load_file(write_tiny_controlnet(tmp_path / name, seed) / "diffusion_pytorch_model.safetensors")
            for name, seed in (("cn", 1), ("cn-again", 1), ("cn-other", 2))]
    assert same(nets[0], nets[1]) and not same(nets[0], nets[2])
