"""SDXL: SD's UNet machinery with two text encoders (penultimate layer, pooled vector) and an fp16-unsafe VAE."""

from __future__ import annotations

from typing import Any

import torch

from sdbatch.family import SDXL
from sdbatch.render.families.protocol import ClipText
from sdbatch.render.families.stable_diffusion import StableDiffusion
from sdbatch.render.models.fastpath import keep_vae_in_float32


class StableDiffusionXL(StableDiffusion):
    descriptor = SDXL
    # CLIP-L, then OpenCLIP-G (a LoRA's keys for it carry the prefix "text_encoder_2").
    text_slots = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))

    def claims_config(self, config: dict) -> bool:
        # Its UNet adds an embedding of the image size and crop ("time ids") and the pooled text vector.
        return config.get("addition_embed_type") == "text_time"

    def words_for_config(self, config: dict) -> str:
        return "SDXL"

    def prepare_vae(self, vae, dtype: torch.dtype) -> None:
        # fp16-fixed VAEs set force_upcast False and stay in fp16.
        if dtype == torch.float16 and vae.config.force_upcast:
            keep_vae_in_float32(vae)

    def text(self, pipe) -> ClipText:
        # A1111 zeroes an empty negative prompt here, as diffusers does a missing one (force_zeros_for_empty_prompt).
        return ClipText(self.encoder_pairs(pipe), penultimate=True, pooled=True, zero_negative=True)

    def text_arguments(self, states: list) -> dict[str, Any]:
        return {**super().text_arguments(states), "pooled_prompt_embeds": torch.cat([c.pooled for c in states]),
                "negative_pooled_prompt_embeds": torch.cat([c.negative_pooled for c in states])}
