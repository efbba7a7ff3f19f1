"""VariantCache: a row's LoRAs made active, the pipeline (base or ControlNet) to call and its VAE, on one model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sdbatch.render.families import for_model
from sdbatch.render.families.protocol import RenderFamily
from sdbatch.render.models.fastpath import wants_channels_last
from sdbatch.render.variants.controlnets import ControlNets, LoadedControlNet
from sdbatch.render.variants.fetch import Fetcher
from sdbatch.render.variants.hotswap import HotswapLoras
from sdbatch.render.variants.kinds import Kinds
from sdbatch.render.variants.loras import LoraAdapters, StateDictCache
from sdbatch.render.variants.vaes import Vaes
from sdbatch.settings import FastPath, VariantSettings


@dataclass(frozen=True)
class ActiveVariant:
    """What one pipeline call uses: the pipeline, and the identities of its LoRAs and ControlNets."""

    pipeline: Any
    loras_used: list[dict] = field(default_factory=list)  # {path, sha256, weight} per LoRA
    controlnets: list[LoadedControlNet] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)  # per ControlNet
    vae_hash: str | None = None  # the override VAE's content identity; None: the model's own VAE
    second_pass: Any = None  # hires rows: the img2img pipeline of the same modules
    family: RenderFamily | None = None  # the model's: how the rows' text states and latents go into the pipeline


class VariantCache:
    """LoRA adapters and ControlNets kept warm on one base pipeline (one per actor and loaded model)."""

    def __init__(self, base, device: torch.device, dtype: torch.dtype, settings: VariantSettings,
                 state_dicts: StateDictCache, fetcher: Fetcher, fast: FastPath = FastPath(),
                 family: RenderFamily | None = None):
        self.base = base
        self.family = family = family or for_model(base)
        if fast.compile:  # a new adapter or set_adapters would recompile the denoiser: copy into fixed slots
            self.loras = HotswapLoras(base, state_dicts, fetcher, fast.lora_slots, fast.lora_rank, family)
        else:
            self.loras = LoraAdapters(base, state_dicts, fetcher, settings.max_loras_resident, family)
        channels_last = wants_channels_last(fast, device)
        self.controlnets = ControlNets(base, device, dtype, settings.controlnets_on_device,
                                       settings.controlnets_on_cpu, channels_last, family)
        self.vaes = Vaes(base, device, dtype, settings.vaes_resident, fetcher.s3, channels_last, family)
        self.kinds = Kinds(dtype, family)

    def activate(self, loras: list[dict], controlnets: list[dict], vae: str | None = None, kind: str = "txt2img",
                 hires: bool = False) -> ActiveVariant:
        """Make the rows' LoRAs active (others resident but off), pick the pipeline of the rows' kind (and, for
        a hires pass, its img2img pipeline) and give it the rows' VAE (set on every call: a derived pipeline
        keeps the VAE it was built with); VariantError if unusable."""
        source, nets = self.base, []
        if controlnets:
            source, nets = self.controlnets.pipeline([str(c["model"]) for c in controlnets])
        pipeline = self.kinds.of(source, kind)
        second = self.kinds.of(source, "img2img") if hires else None
        vae_hash = self.vaes.apply(pipeline, vae)
        if second is not None:
            self.vaes.apply(second, vae)
        # LoRAs live in the denoiser and text encoders, which every derived pipeline shares with the base.
        used = self.loras.activate(loras)
        return ActiveVariant(pipeline, used, nets, [float(c["scale"]) for c in controlnets], vae_hash, second,
                             self.family)

    def resident(self) -> dict[str, Any]:
        return {"loras": self.loras.resident(), "controlnets": self.controlnets.resident(),
                "vaes": self.vaes.resident()}
