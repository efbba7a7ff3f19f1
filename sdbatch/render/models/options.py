"""A loaded pipeline's memory and speed options from [render]: offload, quantization and step caching."""

from __future__ import annotations

import torch

from sdbatch.errors import ModelLoadError
from sdbatch.settings import FastPath, step_cache_parts

# The first cards with fp8 tensor cores (Ada: compute capability 8.9; Hopper 9.0).
FP8_CAPABILITY = (8, 9)


def place(pipe, device: torch.device, fast: FastPath):
    """The pipeline on its device, or with diffusers' CPU offload hooks moving its parts there as they run."""
    if fast.offload == "none":
        return pipe.to(device)
    if device.type != "cuda":
        raise ModelLoadError(f"render.offload = {fast.offload!r} moves weights between a GPU and host memory, and "
                             f"this actor renders on {device.type}; use offload = 'none' there")
    if fast.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
    return pipe


def quantize(denoiser: torch.nn.Module, device: torch.device, fast: FastPath) -> None:
    """The denoiser's linear weights quantized in place (torchao, weight-only), or left as they are."""
    if fast.quantize == "none":
        return
    if fast.quantize == "fp8" and not (device.type == "cuda" and
                                       torch.cuda.get_device_capability(device) >= FP8_CAPABILITY):
        raise ModelLoadError("render.quantize = 'fp8' needs a GPU with fp8 (Ada, Hopper or later), and this actor "
                             f"renders on {_named(device)}; use quantize = 'int8' or 'none'")
    try:
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError as exc:
        raise ModelLoadError(f"render.quantize = {fast.quantize!r} needs torchao in the actor's environment: "
                             "pip install torchao (or sdbatch[quantize])") from exc
    quantize_(denoiser, Int8WeightOnlyConfig() if fast.quantize == "int8" else Float8WeightOnlyConfig())


def enable_step_cache(denoiser: torch.nn.Module, fast: FastPath) -> None:
    """diffusers' step cache on the denoiser, as the job names it; refused where diffusers has none for it."""
    parts = step_cache_parts(fast.step_cache)
    if parts is None:
        return
    from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig
    from diffusers.models.cache_utils import CacheMixin

    if not isinstance(denoiser, CacheMixin):
        raise ModelLoadError(f"render.step_cache = {fast.step_cache!r}: diffusers has no step caching for "
                             f"{type(denoiser).__name__}; render this model's rows with step_cache = 'none'")
    name, value = parts
    if name == "first_block":
        config = FirstBlockCacheConfig(threshold=float(value))
    else:
        # The Taylor factors in the denoiser's own precision: bf16 factors on a float32 CPU model would mix types.
        config = TaylorSeerCacheConfig(cache_interval=int(value), taylor_factors_dtype=denoiser.dtype)
    denoiser.enable_cache(config)


def _named(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
