"""The fast render path's parts: precision per device, memory layout, SDPA, the fp32 VAE, threads, batch size
(render/families/ applies them to each family's modules)."""

from __future__ import annotations

import torch

from sdbatch.settings import FastPath

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Peak memory of one SD image in half precision, per output pixel: the VAE decoder's full-size
# activations (256 and 128 channels at 512x512) dominate; the UNet's with SDPA are a fraction of it.
# An estimate from the architecture: bench/efficiency.py --device cuda prints the bare loop's measured peak
# memory per batch size to check it against (docs/BENCHMARKS.md).
HALF_BYTES_PER_PIXEL = 2560
# Share of the free device memory a batch may plan to use: fragmentation, ControlNets loaded later,
# and the estimate's error need the rest. An overshoot costs one halving (see Renderer), not a failure.
MEMORY_SHARE = 0.5
# Beyond this a UNet batch is compute-bound on any current card: more rows add latency, not speed.
MAX_AUTO_BATCH = 16


def pick_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """The denoiser's precision: bf16 where the card has it (SD1.5/SD2/SDXL run in it unchanged), else fp16."""
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"dtype {requested!r} is not known; use auto, {', '.join(DTYPES)}")
        return DTYPES[requested]
    if device.type != "cuda":
        return torch.float32
    # Pre-Ampere cards emulate bf16 slowly; including_emulation=False says whether it is native.
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def wants_channels_last(fast: FastPath, device: torch.device) -> bool:
    return fast.channels_last if fast.channels_last is not None else device.type == "cuda"


def keep_vae_in_float32(vae) -> None:
    """A VAE that overflows in fp16 (SDXL's: NaN images), kept in fp32 for good: the pipeline's own force_upcast
    would move its weights to fp32 and back on every call. Inputs are cast as they arrive."""
    vae.to(torch.float32)
    for module in (vae.post_quant_conv, vae.decoder):
        if module is not None:
            module.register_forward_pre_hook(_cast_inputs_to_float32)


def _cast_inputs_to_float32(_module, args):
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def use_sdpa(denoiser) -> None:
    """torch 2's fused attention (flash / memory-efficient kernels) instead of the classic processor, which
    materialises the attention matrix; other processors (IP-Adapter, custom) are left as they are."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processors = denoiser.attn_processors
    if any(type(p) is AttnProcessor for p in processors.values()):
        denoiser.set_attn_processor({name: AttnProcessor2_0() if type(p) is AttnProcessor else p
                                     for name, p in processors.items()})


def set_cpu_threads(threads: int | None) -> None:
    """Give torch the CPUs this process is entitled to: Ray sets OMP_NUM_THREADS to an actor's num_cpus
    (1 for a GPU actor), and torch starts with that many threads. (An actor's priority is the actor's
    business: engine/actor.py.)"""
    if not threads:
        return
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # allowed once, before any inter-op work; the intra-op count is what matters
        pass


def auto_batch_size(device: torch.device, dtype: torch.dtype, width: int, height: int) -> int:
    """Rows per call when the user set none: what fits half the free device memory, at most 16; 4 on the CPU."""
    if device.type != "cuda":
        return 4  # CPU throughput stops growing past a few rows; small batches show progress sooner
    free, _total = torch.cuda.mem_get_info(device)
    per_image = HALF_BYTES_PER_PIXEL * width * height * (2 if dtype == torch.float32 else 1)
    return max(1, min(MAX_AUTO_BATCH, int(free * MEMORY_SHARE // per_image)))
