"""Per-row variants on one warm base pipeline: the row's LoRAs made active, the pipeline (base or ControlNet) to call, its VAE."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sdbatch.render.controlnets import ControlNets, LoadedControlNet
from sdbatch.render.fastpath import FastPath, wants_channels_last
from sdbatch.render.fetch import Fetcher
from sdbatch.render.hotswap import HotswapLoras
from sdbatch.render.loras import LoraAdapters, StateDictCache
from sdbatch.render.vaes import Vaes


@dataclass(frozen=True)
class VariantSettings:
    # Parsed LoRAs kept in host memory, so going back to one costs no disk read or parse. SD1.5 LoRAs
    # are 10-200 MB: 2 GiB holds dozens and is small beside a GPU node's RAM (lower it for many CPU actors).
    lora_cache_bytes: int = 2 << 30
    # Adapters left loaded in the pipeline. An inactive one costs its weights' memory on the device but no
    # compute; 8 covers rows with a few LoRAs each while the actor alternates between several sets.
    max_loras_resident: int = 8
    # An SD1.5 ControlNet is ~0.7 GiB in fp16: 2 on the device serve two-ControlNet rows without moves
    # and leave a 16-24 GiB card room for the UNet's activations.
    controlnets_on_device: int = 2
    # Parked in host memory: moving one back takes a fraction of a second, loading it from disk seconds.
    controlnets_on_cpu: int = 4
    # Control images are small; 4 parallel reads hide S3/HTTP latency for the next batch or two.
    fetch_threads: int = 4
    # Fetched ahead of rendering at most: keeps I/O ahead of the GPU with bounded memory.
    prefetch_images: int = 16
    # Per-request timeout for http(s) images (S3 reads use S3Settings): a stuck server fails a row, not the run.
    fetch_timeout: float = 30.0
    # VAE overrides kept loaded: an SD VAE is ~0.17 GB in fp16, and a job rarely mixes more than one or two.
    vaes_resident: int = 2


@dataclass(frozen=True)
class ActiveVariant:
    """What one pipeline call uses: the pipeline, and the identities of its LoRAs and ControlNets."""

    pipeline: Any
    loras_used: list[dict] = field(default_factory=list)  # {path, sha256, weight} per LoRA
    controlnets: list[LoadedControlNet] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)  # per ControlNet
    vae_hash: str | None = None  # the override VAE's content identity; None: the model's own VAE


class Variants:
    """LoRA adapters and ControlNets kept warm on one base pipeline (one per actor and loaded model)."""

    def __init__(self, base, device: torch.device, dtype: torch.dtype, settings: VariantSettings,
                 state_dicts: StateDictCache, fetcher: Fetcher, fast: FastPath = FastPath()):
        self.base = base
        if fast.compile:  # a new adapter or set_adapters would recompile the UNet: copy into fixed slots
            self.loras = HotswapLoras(base, state_dicts, fetcher, fast.lora_slots, fast.lora_rank)
        else:
            self.loras = LoraAdapters(base, state_dicts, fetcher, settings.max_loras_resident)
        self.controlnets = ControlNets(base, device, dtype, settings.controlnets_on_device,
                                       settings.controlnets_on_cpu, channels_last=wants_channels_last(fast, device))
        self.vaes = Vaes(base, device, dtype, settings.vaes_resident, fetcher.s3, wants_channels_last(fast, device))

    def activate(self, loras: list[dict], controlnets: list[dict], vae: str | None = None) -> ActiveVariant:
        """Make the rows' LoRAs active (others resident but off), pick the pipeline and give it the rows' VAE
        (set on every call: a ControlNet pipeline keeps the VAE it was built with); VariantError if unusable."""
        pipeline, nets = self.base, []
        if controlnets:
            pipeline, nets = self.controlnets.pipeline([str(c["model"]) for c in controlnets])
        vae_hash = self.vaes.apply(pipeline, vae)
        # LoRAs live in the UNet and text encoder, which a ControlNet pipeline shares with the base.
        used = self.loras.activate(loras)
        return ActiveVariant(pipeline, used, nets, [float(c["scale"]) for c in controlnets], vae_hash)

    def resident(self) -> dict[str, Any]:
        return {"loras": self.loras.resident(), "controlnets": self.controlnets.resident(),
                "vaes": self.vaes.resident()}
