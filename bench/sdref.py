"""Shared by the benchmarks: an SD1.5-architecture model with random weights, and a bare diffusers loop."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

# Stable Diffusion 1.5's own component configs (runwayml/stable-diffusion-v1-5), written out so that no
# hub is needed: the compute of a real SD1.5 image, with random weights.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768)
# Forward FLOPs of one SD1.5 image at 512x512, 30 steps with classifier-free guidance (UNet x 60, VAE, CLIP).
FLOPS_PER_IMAGE = 51e12
MARKER = "sdbatch_bench_sd15.json"


def write_sd15_random(folder: str | Path, device: str = "cpu", seed: int = 0) -> Path:
    """A diffusers folder with SD1.5's architecture and random weights (fp16 files, ~2 GB); reused when present."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdbatch.render.tiny.sd15 import make_tokenizer, scheduler_config

    target = Path(folder)
    if (target / MARKER).is_file():
        return target
    tokenizer = make_tokenizer()  # byte-level: any prompt, no vocabulary files
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                 **SD15_TEXT)
    torch.manual_seed(seed)
    with torch.device(device):  # random init of 1B parameters is seconds on a GPU, a minute on 2 CPU cores
        unet, vae, text = UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD15_VAE), CLIPTextModel(text_config)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler.from_config(scheduler_config()), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(target, safe_serialization=True)
    (target / MARKER).write_text(json.dumps({"seed": seed}))
    return target


def bare_loop(model: str, rows: list[dict], batch: int, steps: int, width: int, height: int, out: str | Path,
              device: str, dtype: torch.dtype, channels_last: bool = False, compile: bool = False) -> dict:
    """What one would write without sdbatch: load once, one CPU generator per row, save PNGs with PIL."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False).to(device)
    pipe.set_progress_bar_config(disable=True)
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile:
        pipe.unet.compile()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started, calls = time.perf_counter(), []
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        generators = [torch.Generator("cpu").manual_seed(int(r["seed"])) for r in chunk]
        call_started = time.perf_counter()
        with torch.inference_mode():
            images = pipe(prompt=[r["prompt"] for r in chunk], negative_prompt=[""] * len(chunk),
                          num_inference_steps=steps, guidance_scale=7.5, width=width, height=height,
                          generator=generators).images
        calls.append(time.perf_counter() - call_started)
        for row, image in zip(chunk, images):
            image.save(out / f"{row['id']}.png")
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {"render_seconds": time.perf_counter() - started, "images": len(rows), "call_seconds": calls,
            "peak_gib": peak}


def bench_rows(count: int, offset: int = 0, distinct: bool = False) -> list[dict]:
    """Six prompts in turn, each with many seeds, as datasets repeat them; `distinct`: every prompt its own (a
    number added), so nothing that reuses encoded prompts can help."""
    subjects = ("a red fox", "a lighthouse", "a bowl of ramen", "an old tram", "a paper crane", "a koi pond")
    return [{"id": f"r{i:05d}", "prompt": f"{subjects[i % len(subjects)]}, watercolor, detailed"
             + (f", no. {i}" if distinct else ""), "seed": 1000 + i}
            for i in range(offset, offset + count)]


UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def write_random_lora(pipe, path: str | Path, seed: int, rank: int = 16, alpha: int = 16) -> Path:
    """A diffusers-format LoRA file for any SD pipeline's attention projections (UNet and CLIP), random weights
    drawn on the CPU; the pipeline itself is not touched."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig

    target = Path(path)
    generator = torch.Generator("cpu").manual_seed(seed)
    layers, metadata = {}, {}
    for part, module, targets in (("unet", pipe.unet, UNET_TARGETS), ("text_encoder", pipe.text_encoder, TEXT_TARGETS)):
        state = {}
        for name, layer in module.named_modules():
            if isinstance(layer, torch.nn.Linear) and name.endswith(targets):
                down = torch.randn(rank, layer.in_features, generator=generator) / rank
                up = torch.randn(layer.out_features, rank, generator=generator) * 0.05
                state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"] = down, up
        layers[f"{part}_lora_layers"] = convert_state_dict_to_diffusers(state)
        metadata[f"{part}_lora_adapter_metadata"] = LoraConfig(r=rank, lora_alpha=alpha,
                                                               target_modules=list(targets)).to_dict()
    target.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(target.parent, weight_name=target.name, **layers, **metadata)
    return target
