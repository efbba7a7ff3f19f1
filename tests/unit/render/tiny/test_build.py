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


# The families with a transformer, T5 and a 16-channel VAE, and the pipeline class their folder names.
TRANSFORMER_FAMILIES = {"flux": "FluxPipeline", "sd3": "StableDiffusion3Pipeline"}
SIDE = 64  # FLUX's default size is 128 * vae_scale_factor, a constant: 64 px must be asked for


def render_64(pipe, prompt="a red cube", seed=1, steps=2, **kwargs) -> np.ndarray:
    return render(pipe, prompt, seed, steps, width=SIDE, height=SIDE, **kwargs)[1].astype(np.int16)


@pytest.fixture(scope="module", params=sorted(TRANSFORMER_FAMILIES))
def family_model(request, tmp_path_factory):
    """(family, folder, the folder loaded offline, the same pipeline built in memory)."""
    from diffusers import DiffusionPipeline

    from sdbatch.render.tiny.build import build_pipeline

    family = request.param
    folder = write_tiny_model(tmp_path_factory.mktemp(family) / "model", seed=0, family=family)
    with pytest.MonkeyPatch.context() as mp:
        go_offline(mp)
        loaded = DiffusionPipeline.from_pretrained(folder)
    built = build_pipeline(0, family)
    for pipeline in (loaded, built):
        pipeline.set_progress_bar_config(disable=True)
    return family, folder, loaded, built


def test_transformer_family_folder_names_its_pipeline_and_loads_offline(family_model):
    import json

    family, folder, loaded, _ = family_model
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == TRANSFORMER_FAMILIES[family]
    assert type(loaded).__name__ == TRANSFORMER_FAMILIES[family]
    assert is_tiny_model_dir(folder)
    assert loaded.vae.config.latent_channels == 16
    assert loaded.vae.config.shift_factor is not None  # normalised as (z - shift) * scale, as FLUX's and SD3's
    t5 = loaded.tokenizer_2 if family == "flux" else loaded.tokenizer_3
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    assert t5.model_max_length == 512


def test_scheduler_mirrors_flux_dev_and_sd3(family_model):
    family, _, loaded, _ = family_model
    config = loaded.scheduler.config
    assert config.shift == 3.0
    if family == "flux":
        assert loaded.transformer.config.guidance_embeds
        assert (config.use_dynamic_shifting, config.base_shift, config.max_shift) == (True, 0.5, 1.15)
        assert (config.base_image_seq_len, config.max_image_seq_len) == (256, 4096)
    else:
        assert not config.use_dynamic_shifting


def test_transformer_family_renders_64px_deterministically_as_built(family_model):
    _, _, loaded, built = family_model
    image, _ = render(loaded, width=SIDE, height=SIDE)
    assert image.size == (SIDE, SIDE) and image.mode == "RGB"
    first = render_64(loaded)
    assert first.std() > 1.0
    assert np.array_equal(first, render_64(loaded))
    assert np.array_equal(first, render_64(built))  # the folder holds exactly what build_pipeline makes
    assert not np.array_equal(first, render_64(loaded, seed=2))
    assert not np.array_equal(first, render_64(loaded, prompt="a photo of a cat"))


def test_default_size_and_t5_length(family_model):
    family, _, loaded, _ = family_model
    # SD3 takes its default from the transformer's sample_size; FLUX from a constant 128 latents.
    assert loaded.default_sample_size * loaded.vae_scale_factor == {"sd3": SIDE, "flux": 256}[family]
    if family == "sd3":
        assert render(loaded)[0].size == (SIDE, SIDE)
    # The default max_sequence_length (FLUX 512, SD3 256) pads T5 to that length; SD3 puts CLIP's 77 before it.
    embeds = loaded.encode_prompt("a red cube", prompt_2=None, **({"prompt_3": None} if family == "sd3" else {}))[0]
    assert embeds.shape[1] == {"flux": 512, "sd3": 77 + 256}[family]


def test_t5_prompt_past_its_length_and_unknown_symbols_render(family_model):
    family, _, loaded, _ = family_model
    t5 = loaded.tokenizer_2 if family == "flux" else loaded.tokenizer_3
    ids = t5("a café at dusk").input_ids
    assert ids[-1] == t5.eos_token_id and t5.unk_token_id not in ids
    assert t5.unk_token_id in t5("🐱").input_ids  # as in T5's real vocabulary
    render_64(loaded, prompt="a café 🐱 at dusk " * 60)  # past 512 T5 tokens and 77 CLIP tokens: truncated


@pytest.mark.parametrize("family", sorted(TRANSFORMER_FAMILIES))
def test_transformer_family_weights_depend_on_the_seed_only(family):
    from sdbatch.render.tiny.build import build_pipeline

    rng_before = torch.get_rng_state()
    first, again, other = (build_pipeline(seed, family).transformer.state_dict() for seed in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("family", sorted(TRANSFORMER_FAMILIES))
def test_tiny_lora_changes_the_image_and_weight_zero_gives_it_back(family, tmp_path):
    from sdbatch.render.tiny.build import build_pipeline
    from tests.support.tiny_variants import write_tiny_lora

    pipe = build_pipeline(0, family)
    pipe.set_progress_bar_config(disable=True)
    base = render_64(pipe)
    for part in ({}, {"text_encoder": False}, {"unet": False}):
        pipe.load_lora_weights(write_tiny_lora(tmp_path / "lora.safetensors", 1, family=family, **part), "style")
        assert np.abs(render_64(pipe) - base).mean() > 2, part
        pipe.set_adapters(["style"], [0.0])
        assert np.array_equal(render_64(pipe), base), part
        pipe.unload_lora_weights()


def test_kohya_flux_lora_renders_as_its_diffusers_original(tmp_path):
    from sdbatch.render.tiny.build import build_pipeline
    from tests.support.tiny_variants import convert_flux_lora_to_kohya, write_tiny_lora

    pipe = build_pipeline(0, "flux")
    pipe.set_progress_bar_config(disable=True)
    base = render_64(pipe)
    original = write_tiny_lora(tmp_path / "d.safetensors", 1, family="flux", single_blocks=False)
    kohya = convert_flux_lora_to_kohya(original, tmp_path / "k.safetensors")
    assert any(k.startswith("lora_unet_double_blocks_0_img_attn_qkv") for k in load_file(kohya))
    images = []
    for path in (original, kohya):
        pipe.load_lora_weights(path, "style")
        images.append(render_64(pipe))
        pipe.unload_lora_weights()
    assert np.abs(images[1] - base).mean() > 2
    assert np.abs(images[1] - images[0]).max() <= 1
    with pytest.raises(ValueError, match="single_blocks=False"):
        convert_flux_lora_to_kohya(write_tiny_lora(tmp_path / "s.safetensors", 1, family="flux"), tmp_path / "x")


@pytest.mark.parametrize("family", sorted(TRANSFORMER_FAMILIES))
def test_tiny_controlnet_follows_its_control_image(family, tmp_path):
    from diffusers import (
        FluxControlNetModel,
        FluxControlNetPipeline,
        SD3ControlNetModel,
        StableDiffusion3ControlNetPipeline,
    )
    from PIL import Image

    from sdbatch.render.tiny.build import build_pipeline
    from tests.support.tiny_variants import write_tiny_controlnet

    net_class, pipe_class = {"flux": (FluxControlNetModel, FluxControlNetPipeline),
                             "sd3": (SD3ControlNetModel, StableDiffusion3ControlNetPipeline)}[family]
    base = build_pipeline(0, family)
    nets = [net_class.from_pretrained(write_tiny_controlnet(tmp_path / f"cn{seed}", seed, family=family))
            for seed in (1, 2)]
    black, white = Image.new("RGB", (SIDE, SIDE)), Image.new("RGB", (SIDE, SIDE), "white")
    pipe = pipe_class.from_pipe(base, controlnet=nets[0])
    pipe.set_progress_bar_config(disable=True)
    on_black, on_white = (render_64(pipe, control_image=image) for image in (black, white))
    assert np.abs(on_white - render_64(base)).mean() > 10
    assert np.abs(on_white - on_black).mean() > 10
    # Two nets: control_image is a list per net, each a list per row (a single image serves every row).
    multi = pipe_class.from_pipe(base, controlnet=nets)
    multi.set_progress_bar_config(disable=True)
    rows = multi(["a red cube", "a cat"], control_image=[[white, black], [black, white]], width=SIDE, height=SIDE,
                 controlnet_conditioning_scale=[1.0, 0.5], num_inference_steps=2,
                 generator=[torch.Generator("cpu").manual_seed(seed) for seed in (1, 2)]).images
    alone = render_64(multi, prompt="a cat", seed=2, control_image=[[black], [white]],
                      controlnet_conditioning_scale=[1.0, 0.5])
    assert np.abs(np.asarray(rows[1]).astype(np.int16) - alone).max() <= 1  # row 1 got the images listed second


@pytest.mark.parametrize("family", sorted(TRANSFORMER_FAMILIES))
def test_transformer_family_lora_and_controlnet_are_deterministic_per_seed(family, tmp_path):
    from tests.support.tiny_variants import write_tiny_controlnet, write_tiny_lora

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    loras = [load_file(write_tiny_lora(tmp_path / f"{n}.safetensors", seed, family=family))
             for n, seed in enumerate((1, 1, 2))]
    assert same(loras[0], loras[1]) and not same(loras[0], loras[2])
    nets = [load_file(write_tiny_controlnet(tmp_path / f"cn{n}", seed, family=family) /
                      "diffusion_pytorch_model.safetensors") for n, seed in enumerate((1, 1, 2))]
    assert same(nets[0], nets[1]) and not same(nets[0], nets[2])
