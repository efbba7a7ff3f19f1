"""Real-size random-weight diffusers folders of FLUX.1-dev, SD3.5 and SDXL, from their published configs.

Every module is built on the target device in bfloat16 (a 12B transformer's random init takes seconds on a GPU)
and saved as safetensors, in one process. The text encoders that families share (CLIP-L, OpenCLIP-bigG, T5-XXL:
9.5 GB of FLUX.1's and SD3's 33 and 16 GB) are written once into `--parts` and hard-linked into each model
folder, so deleting a model folder after its benchmark frees its denoiser and leaves the shared encoders. The
tokenizers are sdbatch's offline ones (CLIP: byte-level BPE from an in-memory vocabulary; T5: a Unigram of
single characters, no sentencepiece file); the embedding tables keep the real vocabulary sizes (49408, 32128), so
compute and memory are the real models'. Prompts are padded to the real token counts (CLIP 77, T5 512 or 256).

While the denoiser is still on the device, this also counts the FLOPs of one denoiser step of one image at the
benchmark's shapes with torch.utils.flop_counter.FlopCounterMode (two forwards' worth with classifier-free
guidance: SD3 and SDXL; FLUX.1-dev's guidance is an input, one forward) and of one VAE decode, and times both:
the bare denoiser's step time and MFU are the ceiling the pipelines' figures are read against.

    python bench/gpu/models.py flux --out /tmp/m/flux --device cuda --size 1024 --json-out flux.json
    .venv/bin/python bench/gpu/models.py flux --quick --out /tmp/m/flux-quick      # a few blocks, small widths
    .venv/bin/python bench/gpu/models.py all --count-only       # parameters and FLOPs of the real sizes, on meta

--quick builds the same architectures with a few blocks and small widths (the same code path, seconds on a CPU).
--count-only builds the real sizes on the meta device (no memory), prints parameters and FLOPs, writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MARKER = "sdbatch_bench_model.json"  # written last: a folder that has it is complete
H100_BF16_PEAK_TFLOPS = 989.0  # dense bf16 tensor-core peak of an H100 SXM (bench/efficiency.py's)
CLIP_VOCAB, T5_VOCAB = 49408, 32128  # the real tokenizers' sizes: the embedding tables' rows
CLIP_TOKENS = 77
# T5 tokens per prompt as each family's pipeline pads them (sdbatch's defaults; bench/efficiency.py passes them).
T5_TOKENS = {"flux": 512, "sd3": 256}
# Classifier-free guidance: the denoiser runs on a batch of two per image (FLUX.1-dev's guidance is distilled).
CFG_BATCH = {"flux": 1, "sd3": 2, "sdxl": 2}
FAMILIES = ("flux", "sd3", "sdxl")

# ------------------------------------------------------------------------------------------------ configs
# The published configs (black-forest-labs/FLUX.1-dev, stabilityai/stable-diffusion-3.5-medium and -large,
# stabilityai/stable-diffusion-xl-base-1.0), written out; QUICK holds the few blocks and small widths of --quick.

CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", projection_dim=768)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              hidden_act="gelu", projection_dim=1280)
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
SD35 = {
    "medium": dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                   attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                   caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                   dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),
    "large": dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38,
                  attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,
                  caption_projection_dim=2432, pooled_projection_dim=2048, pos_embed_max_size=192,
                  qk_norm="rms_norm"),
}
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                                      "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(320, 640, 1280),
    layers_per_block=2, attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32,
)
VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
           act_fn="silu", norm_num_groups=32, sample_size=1024, force_upcast=True)
VAES = {  # latents normalised as (z - shift) * scale; 16 channels and no quant convs for the flow families
    "sdxl": dict(latent_channels=4, scaling_factor=0.13025),
    "flux": dict(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611,
                 shift_factor=0.1159),
    "sd3": dict(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5305,
                shift_factor=0.0609),
}
# Parameters of the real sizes (counted on meta from the configs above); a build that differs by >1% warns.
EXPECTED = {"flux-transformer": 11_901_408_320, "t5xxl": 4_762_310_656, "clip-l": 123_060_480,
            "clip-g": 694_659_840, "sdxl-unet": 2_567_463_684}

QUICK = {
    "clip-l": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                   projection_dim=32),
    "clip-g": dict(hidden_size=48, intermediate_size=53, num_hidden_layers=2, num_attention_heads=4,
                   projection_dim=48),
    # 96 wide: SD3 pads the two CLIPs' states side by side (32 + 48) to T5's width, which must be wider
    "t5xxl": dict(d_model=96, d_kv=8, d_ff=37, num_layers=2, num_heads=4),
    "flux": dict(num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                 joint_attention_dim=96, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)),
    "sd3": dict(sample_size=8, num_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=96,
                caption_projection_dim=32, pooled_projection_dim=80, pos_embed_max_size=96),
    "sdxl": dict(sample_size=8, block_out_channels=(32, 64, 64), layers_per_block=1, attention_head_dim=(2, 4, 4),
                 transformer_layers_per_block=(1, 1, 2), cross_attention_dim=80, addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=6 * 8 + 48),
    "vae": dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, sample_size=64),
}


def denoiser_config(family: str, variant: str, quick: bool) -> dict:
    base = {"flux": FLUX_DEV, "sd3": SD35[variant], "sdxl": SDXL_UNET}[family]
    config = {**base, **(QUICK[family] if quick else {})}
    if quick and family == "sd3" and config.get("dual_attention_layers"):
        config["dual_attention_layers"] = (0,)  # medium's MMDiT-X blocks, one of them
    return config


def vae_config(family: str, quick: bool) -> dict:
    return {**VAE, **VAES[family], **(QUICK["vae"] if quick else {})}


# ------------------------------------------------------------------------------------------------ building

@contextlib.contextmanager
def building(device: str | torch.device):
    """Modules constructed inside are allocated on `device` in bfloat16 and randomly initialised there."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def tokenizers():
    from sdbatch.render.tiny.sd15 import make_tokenizer
    from sdbatch.render.tiny.t5 import make_t5_tokenizer

    return make_tokenizer, make_t5_tokenizer


def text_part(name: str, quick: bool):
    """(class name, builder) of a shared text encoder: clip-l (plain or with its projection), clip-g, t5xxl."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    clip_tokenizer, t5_tokenizer = tokenizers()
    if name.startswith("clip"):
        tokenizer = clip_tokenizer()
        shape = {**(CLIP_G if name.startswith("clip-g") else CLIP_L)}
        shape.update(QUICK[name.split("-proj")[0]] if quick else {})
        config = CLIPTextConfig(vocab_size=len(tokenizer) if quick else CLIP_VOCAB,
                                max_position_embeddings=CLIP_TOKENS, layer_norm_eps=1e-5,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id, **shape)
        cls = CLIPTextModelWithProjection if name.endswith("-proj") else CLIPTextModel
        return cls, config
    tokenizer = t5_tokenizer()
    # T5 v1.1 (FLUX.1's and SD3's): gated GELU, untied embeddings, relative position buckets
    config = T5Config(vocab_size=len(tokenizer) if quick else T5_VOCAB, feed_forward_proj="gated-gelu",
                      tie_word_embeddings=False, layer_norm_epsilon=1e-6, relative_attention_num_buckets=32,
                      relative_attention_max_distance=128, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                      **{**T5_XXL, **(QUICK["t5xxl"] if quick else {})})
    return T5EncoderModel, config


# What each family's pipeline takes, component by component: (part name, or None for the model's own modules).
TEXT_PARTS = {
    "flux": {"text_encoder": "clip-l", "text_encoder_2": "t5xxl"},
    "sd3": {"text_encoder": "clip-l-proj", "text_encoder_2": "clip-g-proj", "text_encoder_3": "t5xxl"},
    "sdxl": {"text_encoder": "clip-l", "text_encoder_2": "clip-g-proj"},
}


def part_folder(parts: Path, name: str, quick: bool) -> Path:
    cls, config = text_part(name, quick)
    digest = hashlib.sha1(f"{cls.__name__} {config.to_json_string()}".encode()).hexdigest()[:10]
    return parts / f"{name}-{digest}"


def ensure_part(parts: Path, name: str, device: str, quick: bool, seed: int, log: dict) -> Path:
    """The shared text encoder's folder, written once (built on `device`, saved, freed)."""
    folder = part_folder(parts, name, quick)
    if (folder / MARKER).is_file():
        return folder
    cls, config = text_part(name, quick)
    started = time.perf_counter()
    torch.manual_seed(seed)
    with building(device):
        model = cls(config).eval()
    built = time.perf_counter()
    staging = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    sync(device)
    written = time.perf_counter()
    params = count(model)
    check_params(name.split("-proj")[0], params, quick)
    (staging / MARKER).write_text(json.dumps({"class": cls.__name__, "params": params}))
    os.replace(staging, folder)
    del model
    free(device)
    log[name] = {"params": params, "bytes": folder_bytes(folder), "build_s": built - started,
                 "write_s": written - built}
    return folder


def link_tree(source: Path, target: Path) -> None:
    """Hard links of every file (a copy where the two are on different filesystems)."""
    for path in source.rglob("*"):
        if path.is_file() and path.name != MARKER:
            dest = target / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, dest)
            except OSError:
                shutil.copy2(path, dest)


def build_pipeline(family: str, variant: str, quick: bool, device: str, seed: int):
    """The family's pipeline with its own modules (denoiser, VAE) built on `device`, tokenizers and scheduler;
    the text encoders left None (they are linked in from the shared parts)."""
    import diffusers

    clip_tokenizer, t5_tokenizer = tokenizers()
    denoiser_cls = {"flux": diffusers.FluxTransformer2DModel, "sd3": diffusers.SD3Transformer2DModel,
                    "sdxl": diffusers.UNet2DConditionModel}[family]
    torch.manual_seed(seed + 1)
    with building(device):  # the modules only: schedulers keep float32 tables on the CPU
        vae = diffusers.AutoencoderKL(**vae_config(family, quick)).eval()
        denoiser = denoiser_cls(**denoiser_config(family, variant, quick)).eval()
    if family == "flux":
        from sdbatch.render.tiny.flux import scheduler_config

        return diffusers.FluxPipeline(
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(scheduler_config()), vae=vae,
            text_encoder=None, tokenizer=clip_tokenizer(), text_encoder_2=None, tokenizer_2=t5_tokenizer(),
            transformer=denoiser)
    if family == "sd3":
        from sdbatch.render.tiny.sd3 import scheduler_config

        return diffusers.StableDiffusion3Pipeline(
            transformer=denoiser, scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(scheduler_config()),
            vae=vae, text_encoder=None, tokenizer=clip_tokenizer(), text_encoder_2=None,
            tokenizer_2=clip_tokenizer(), text_encoder_3=None, tokenizer_3=t5_tokenizer())
    from sdbatch.render.tiny.sdxl import sdxl_scheduler_config

    return diffusers.StableDiffusionXLPipeline(
        vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(),
        unet=denoiser, scheduler=diffusers.EulerDiscreteScheduler.from_config(sdxl_scheduler_config()),
        add_watermarker=False)


def denoiser_of(pipe):
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


# ------------------------------------------------------------------------------------------------ measuring

def denoiser_inputs(family: str, denoiser, size: int, device, dtype) -> dict:
    """One step's inputs for one image at `size` (two rows with classifier-free guidance), as the pipeline
    builds them: latents at size / 8, prompts padded to the real token counts."""
    batch, config = CFG_BATCH[family], denoiser.config
    latent = size // 8

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    t = torch.full((batch,), 500.0 if family == "sdxl" else 0.5, device=device, dtype=dtype)
    if family == "flux":
        tokens, text = (latent // 2) ** 2, T5_TOKENS["flux"]
        return {"hidden_states": rand(batch, tokens, config.in_channels),
                "encoder_hidden_states": rand(batch, text, config.joint_attention_dim),
                "pooled_projections": rand(batch, config.pooled_projection_dim), "timestep": t,
                "img_ids": torch.zeros(tokens, 3, device=device, dtype=dtype),
                "txt_ids": torch.zeros(text, 3, device=device, dtype=dtype),
                "guidance": torch.full((batch,), 3.5, device=device, dtype=dtype), "return_dict": False}
    if family == "sd3":
        return {"hidden_states": rand(batch, config.in_channels, latent, latent),
                "encoder_hidden_states": rand(batch, CLIP_TOKENS + T5_TOKENS["sd3"], config.joint_attention_dim),
                "pooled_projections": rand(batch, config.pooled_projection_dim), "timestep": t, "return_dict": False}
    text_embeds = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    return {"sample": rand(batch, config.in_channels, latent, latent), "timestep": t,
            "encoder_hidden_states": rand(batch, CLIP_TOKENS, config.cross_attention_dim),
            "added_cond_kwargs": {"text_embeds": rand(batch, text_embeds),
                                  "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * batch, device=device,
                                                           dtype=dtype)},
            "return_dict": False}


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # The CPU's fused attention kernel has no FLOP formula: count attention as the math backend's matmuls there.
    with counter, torch.inference_mode(), cpu_math_attention():
        fn()
    return int(counter.get_total_flops())


@contextlib.contextmanager
def cpu_math_attention():
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - older torch
        yield
        return
    if torch.cuda.is_available():
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


def timed(fn, device: str, warm: int, runs: int) -> float:
    """Median seconds of `runs` calls after `warm` unmeasured ones."""
    import statistics

    with torch.inference_mode():
        for _ in range(warm):
            fn()
        sync(device)
        seconds = []
        for _ in range(runs):
            started = time.perf_counter()
            fn()
            sync(device)
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def measure(family: str, pipe, size: int, steps: int, device: str, peak_tflops: float, timing: bool) -> dict:
    denoiser, vae = denoiser_of(pipe), pipe.vae
    dtype = denoiser.dtype
    inputs = denoiser_inputs(family, denoiser, size, device, dtype)
    latents = torch.randn(1, vae.config.latent_channels, size // 8, size // 8, device=device, dtype=dtype)

    def step():
        return denoiser(**inputs)

    def decode():
        return vae.decode(latents, return_dict=False)

    figures = {"size": size, "steps": steps, "cfg_batch": CFG_BATCH[family],
               "t5_tokens": T5_TOKENS.get(family), "clip_tokens": CLIP_TOKENS}
    figures["step_flops"] = count_flops(step)  # per step of one image (both CFG rows)
    figures["vae_decode_flops"] = count_flops(decode)
    figures["image_flops"] = steps * figures["step_flops"] + figures["vae_decode_flops"]
    if device != "meta":  # random weights: sdbatch fails a row whose image is NaN, so check they stay finite
        with torch.inference_mode():
            out, image = step()[0], decode()[0]
            figures["finite"] = bool(torch.isfinite(out).all()) and bool(torch.isfinite(image).all())
            figures["step_output_std"] = float(out.float().std())
        if not figures["finite"]:
            print(f"warning: {family}'s random denoiser or VAE gave non-finite values: sdbatch will fail its rows",
                  file=sys.stderr)
    if timing:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        warm, runs = (2, 5) if device == "cuda" else (1, 2)
        figures["step_s"] = timed(step, device, warm, runs)
        figures["vae_decode_s"] = timed(decode, device, 1, 2)
        figures["bare_image_s"] = steps * figures["step_s"] + figures["vae_decode_s"]
        figures["step_tflops"] = figures["step_flops"] / figures["step_s"] / 1e12
        figures["step_mfu"] = figures["step_flops"] / figures["step_s"] / (peak_tflops * 1e12)
        if device == "cuda":
            figures["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return figures


# ------------------------------------------------------------------------------------------------ writing

def write_model(family: str, out: Path, parts: Path, *, variant: str = "medium", quick: bool = False,
                device: str = "cpu", seed: int = 0, size: int = 1024, steps: int = 28,
                peak_tflops: float = H100_BF16_PEAK_TFLOPS, timing: bool = True) -> dict:
    """The family's model folder at `out` (reused when complete), and its figures: parameters, bytes, seconds
    to build and write, FLOPs and (when `timing`) seconds of one denoiser step and one VAE decode."""
    import diffusers

    marker = out / MARKER
    if marker.is_file():
        return {**json.loads(marker.read_text()), "reused": True}
    started = time.perf_counter()
    log: dict = {}
    linked = {component: ensure_part(parts, name, device, quick, seed, log)
              for component, name in TEXT_PARTS[family].items()}
    parts_done = time.perf_counter()
    pipe = build_pipeline(family, variant, quick, device, seed)
    sync(device)
    built = time.perf_counter()
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    sync(device)
    own_written = time.perf_counter()
    index = json.loads((staging / "model_index.json").read_text())
    for component, folder in linked.items():
        link_tree(folder, staging / component)
        index[component] = ["transformers", json.loads((folder / MARKER).read_text())["class"]]
    (staging / "model_index.json").write_text(json.dumps(index, indent=2))
    denoiser = denoiser_of(pipe)
    params = {"denoiser": count(denoiser), "vae": count(pipe.vae)}
    key = {"flux": "flux-transformer", "sdxl": "sdxl-unet"}.get(family)
    if key:
        check_params(key, params["denoiser"], quick)
    figures = {
        "family": family, "variant": variant if family == "sd3" else None, "quick": quick, "device": device,
        "folder": str(out), "diffusers": diffusers.__version__, "torch": torch.__version__,
        "denoiser_class": type(denoiser).__name__, "denoiser_config": dict(denoiser.config),
        "params": params, "parts": log,
        "bytes_own": folder_bytes(staging) - sum(folder_bytes(f) for f in linked.values()),
        "bytes_total": folder_bytes(staging), "filesystem": filesystem(out.parent),
        "parts_s": parts_done - started, "build_s": built - parts_done, "write_s": own_written - built,
    }
    written = figures["bytes_own"] + sum(p["bytes"] for p in log.values())
    write_seconds = figures["write_s"] + sum(p["write_s"] for p in log.values())
    figures["write_gb_s"] = written / 1e9 / write_seconds if write_seconds else None
    figures["measure"] = measure(family, pipe, size, steps, device, peak_tflops, timing)
    figures["total_s"] = time.perf_counter() - started
    (staging / MARKER).write_text(json.dumps(figures, indent=1, default=str))
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    del pipe, denoiser
    free(device)
    return figures


# ------------------------------------------------------------------------------------------------ counting only

def count_only(families: list[str], variant: str, size: int, steps: int) -> list[dict]:
    """Real sizes on the meta device: parameters and FLOPs, no memory, no files (a check of the configs here)."""
    rows = []
    for name in ("clip-l", "clip-g-proj", "t5xxl"):
        cls, config = text_part(name, quick=False)
        with torch.device("meta"):
            rows.append({"part": name, "params": count(cls(config))})
    for family in families:
        pipe = build_pipeline(family, variant, False, "meta", 0)
        figures = measure(family, pipe, size, steps, "meta", H100_BF16_PEAK_TFLOPS, timing=False)
        rows.append({"family": family, "params": count(denoiser_of(pipe)), "vae_params": count(pipe.vae),
                     **figures})
    return rows


# ------------------------------------------------------------------------------------------------ helpers

def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_params(key: str, params: int, quick: bool) -> None:
    expected = EXPECTED.get(key)
    if not quick and expected and abs(params - expected) > 0.01 * expected:
        print(f"warning: {key} has {params:,} parameters, the published model {expected:,}", file=sys.stderr)


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def free(device) -> None:
    import gc

    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def filesystem(path: Path) -> str:
    """The mount that holds `path` and its type (tmpfs is RAM: no disk writes)."""
    path = path.resolve()
    best = ("?", "?")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, kind = line.split()[:3]
            if str(path).startswith(mount.rstrip("/") + "/") or str(path) == mount:
                if len(mount) >= len(best[0]) or best[0] == "?":
                    best = (mount, kind)
    except OSError:
        pass
    return f"{best[0]} ({best[1]})"


def flops(n: float) -> str:
    unit = next((u for u in ("P", "T", "G", "M") if n >= {"P": 1e15, "T": 1e12, "G": 1e9, "M": 1e6}[u]), "")
    return f"{n / {'P': 1e15, 'T': 1e12, 'G': 1e9, 'M': 1e6, '': 1}[unit]:.3g} {unit}FLOP"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=(*FAMILIES, "all"))
    parser.add_argument("--out", help="the model folder (default: <--root>/<family>)")
    parser.add_argument("--root", default="/tmp/sdbatch-models", help="where model folders go by default")
    parser.add_argument("--parts", help="the shared text encoders' folder (default: <root or out's parent>/_parts)")
    parser.add_argument("--variant", choices=tuple(SD35), default="medium", help="SD3.5 medium or large")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a few blocks and small widths (CPU rehearsal)")
    parser.add_argument("--size", type=int, help="the benchmark's width = height (default 1024; --quick 64)")
    parser.add_argument("--steps", type=int, default=28, help="steps per image, for FLOPs per image")
    parser.add_argument("--no-timing", action="store_true", help="count FLOPs, do not time the denoiser")
    parser.add_argument("--count-only", action="store_true", help="real sizes on meta: parameters and FLOPs")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_PEAK_TFLOPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out")
    args = parser.parse_args()
    families = list(FAMILIES) if args.family == "all" else [args.family]
    size = args.size or (64 if args.quick else 1024)
    if args.count_only:
        results = count_only(families, args.variant, size, args.steps)
        for row in results:
            if "part" in row:
                print(f"{row['part']:12s} {row['params']:>15,} parameters")
            else:
                print(f"{row['family']:12s} {row['params']:>15,} parameters (VAE {row['vae_params']:,}); "
                      f"{row['step_flops'] / 1e12:8.2f} TFLOP per step per image at {size}x{size} "
                      f"(CFG batch {row['cfg_batch']}), VAE decode {row['vae_decode_flops'] / 1e12:.2f} TFLOP, "
                      f"{row['image_flops'] / 1e15:.3f} PFLOP per image at {args.steps} steps")
    else:
        if args.out and len(families) > 1:
            parser.error("--out names one family's folder")
        results = []
        for family in families:
            out = Path(args.out) if args.out else Path(args.root) / family
            parts = Path(args.parts) if args.parts else out.parent / "_parts"
            figures = write_model(family, out, parts, variant=args.variant, quick=args.quick, device=args.device,
                                  seed=args.seed, size=size, steps=args.steps, peak_tflops=args.peak_tflops,
                                  timing=not args.no_timing)
            m = figures["measure"]
            print(f"{family}: {out} ({'reused' if figures.get('reused') else 'written'}), denoiser "
                  f"{figures['params']['denoiser']:,} parameters, {figures['bytes_total'] / 1e9:.2f} GB in the folder "
                  f"({figures['bytes_own'] / 1e9:.2f} GB its own) on {figures['filesystem']}; build "
                  f"{figures['build_s']:.1f} s, write {figures['write_s']:.1f} s, shared encoders "
                  f"{figures['parts_s']:.1f} s, {figures['write_gb_s'] or 0:.2f} GB/s written", flush=True)
            line = (f"{family}: {flops(m['step_flops'])} per step per image at {m['size']}x{m['size']} "
                    f"(CFG batch {m['cfg_batch']}), VAE decode {flops(m['vae_decode_flops'])}, "
                    f"{flops(m['image_flops'])} per image at {m['steps']} steps")
            if "step_s" in m:
                line += (f"; bare denoiser step {m['step_s'] * 1e3:.1f} ms ({m['step_tflops']:.3g} TFLOP/s, MFU "
                         f"{m['step_mfu']:.1%}), VAE decode {m['vae_decode_s'] * 1e3:.1f} ms, bare image "
                         f"{m['bare_image_s']:.2f} s")
            if "peak_gib" in m:
                line += f", peak {m['peak_gib']:.1f} GiB"
            print(line, flush=True)
            results.append(figures)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
