"""SD1.x/2.x: a UNet conditioned on one CLIP text encoder's last layer; the parts SDXL builds on."""

from __future__ import annotations

from typing import Any

import torch

from sdbatch.family import SD1
from sdbatch.render.families.protocol import ClipText, RenderFamily, pair
from sdbatch.render.models.fastpath import use_sdpa, wants_channels_last
from sdbatch.settings import FastPath

# A UNet config's cross-attention width tells the version: CLIP-L's 768 for SD1.x, OpenCLIP-H's 1024 for SD2.x.
VERSIONS = {768: "SD1.x", 1024: "SD2.x"}


class StableDiffusion(RenderFamily):
    descriptor = SD1
    denoiser_lora_prefix = "unet"
    # (tokenizer, text encoder) pipeline attributes per text slot; a LoRA file's text parts carry the encoder's name
    # as their prefix.
    text_slots: tuple[tuple[str, str], ...] = (("tokenizer", "text_encoder"),)

    def denoiser(self, pipe) -> torch.nn.Module:
        return pipe.unet

    def native_size(self, pipe) -> tuple[int, int]:
        # Latent side times the VAE's downscaling: SD1.5 64 * 8 = 512, SDXL 128 * 8 = 1024.
        sample = self.denoiser(pipe).config.sample_size
        side = int(sample) * getattr(pipe, "vae_scale_factor", 8) if sample else self.descriptor.native_size
        return side, side

    def optimize(self, pipe, fast: FastPath, device: torch.device, dtype: torch.dtype) -> None:
        denoiser = self.denoiser(pipe)
        use_sdpa(denoiser)
        self.prepare_vae(pipe.vae, dtype)
        if wants_channels_last(fast, device):
            denoiser.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        # With compile, LoRAs go through hotswap.HotswapLoras, which calls enable_lora_hotswap before each
        # slot's first load (the denoiser's only: peft cannot hotswap the text encoder).

    def compile(self, pipe, fast: FastPath) -> None:
        """In place: `pipe.unet = torch.compile(...)` would hide the UNet from the LoRA methods."""
        if fast.compile:
            self.denoiser(pipe).compile(mode=fast.compile_mode)

    def claims_config(self, config: dict) -> bool:
        # A plain text-conditioned UNet: no added embeddings (size, pooled text) beside the timestep.
        return "cross_attention_dim" in config and config.get("addition_embed_type") is None

    def words_for_config(self, config: dict) -> str:
        return VERSIONS.get(config.get("cross_attention_dim"), "SD1.x/2.x-style")

    def text(self, pipe) -> ClipText:
        return ClipText(self.encoder_pairs(pipe), penultimate=False, pooled=False, zero_negative=False)

    def encoder_pairs(self, pipe) -> tuple[tuple[Any, Any] | None, ...]:
        return tuple(pair(pipe, tokenizer, encoder) for tokenizer, encoder in self.text_slots)

    def text_arguments(self, states: list) -> dict[str, Any]:
        return {"prompt_embeds": torch.cat([c.embeds for c in states]),
                "negative_prompt_embeds": torch.cat([c.negative for c in states])}

    def resize_latents(self, pipe, latents: torch.Tensor, first: tuple[int, int],
                       size: tuple[int, int]) -> torch.Tensor:
        factor = pipe.vae_scale_factor
        return torch.nn.functional.interpolate(latents, size=(size[1] // factor, size[0] // factor), mode="bilinear",
                                               antialias=False)

    def load_denoiser_lora(self, pipe, state_dict: dict, **options) -> None:
        pipe.load_lora_into_unet(state_dict, unet=self.denoiser(pipe), **options)

    def lora_text_encoders(self, pipe) -> list[str]:
        return [encoder for _, encoder in self.text_slots if getattr(pipe, encoder, None) is not None]

    def fits_controlnet(self, config: dict, pipe) -> bool:
        # Of this family and reading text states of the model's width.
        own = self.denoiser(pipe).config.cross_attention_dim
        return self.claims_config(config) and config.get("cross_attention_dim") == own

    def load_controlnet(self, folder, dtype: torch.dtype) -> torch.nn.Module:
        from diffusers import ControlNetModel

        return ControlNetModel.from_pretrained(str(folder), dtype=dtype)
