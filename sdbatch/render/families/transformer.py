"""Diffusion transformers (SD3, FLUX, Z-Image): a transformer denoiser stepped by flow matching, prompts encoded by
the pipeline's own text stack (CLIP and T5, Qwen3), and the parts those families share."""

from __future__ import annotations

from typing import Any

import torch

from sdbatch.errors import VariantError
from sdbatch.render.families.protocol import ClipText, RenderFamily
from sdbatch.settings import FastPath

# The flow-match Euler takes these of an Euler scheduler's options: its sigma schedules. Its own spacing is
# already Forge's "Simple", so a timestep spacing has nothing to change.
FLOW_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas")


class DiffusionTransformer(RenderFamily):
    denoiser_lora_prefix = "transformer"
    # Pipeline attributes of the CLIP encoders a LoRA file may carry text layers for (its keys' prefixes).
    lora_text_slots: tuple[str, ...] = ("text_encoder",)
    # Config keys only this family's transformers (and ControlNets) have.
    config_marks: tuple[str, ...] = ()

    def denoiser(self, pipe) -> torch.nn.Module:
        return pipe.transformer

    def native_size(self, pipe) -> tuple[int, int]:
        # What the pipeline renders when given no size: its default sample size in latents times the VAE's factor.
        sample = getattr(pipe, "default_sample_size", None)
        side = int(sample) * pipe.vae_scale_factor if sample else self.descriptor.native_size
        return side, side

    def optimize(self, pipe, fast: FastPath, device: torch.device, dtype: torch.dtype) -> None:
        # diffusers' transformer attention already runs on scaled_dot_product_attention; channels_last is for
        # convolutions, which these families have only in the VAE.
        self.prepare_vae(pipe.vae, dtype)

    def compile(self, pipe, fast: FastPath) -> None:
        if fast.compile:
            self.denoiser(pipe).compile(mode=fast.compile_mode)

    def claims_config(self, config: dict) -> bool:
        return all(mark in config for mark in self.config_marks)

    def text(self, pipe) -> ClipText | None:
        return None

    def needs_negative(self, row: dict[str, Any]) -> bool:
        """Whether the call guides with the negative prompt (else it is not encoded at all)."""
        return float(row["guidance_scale"]) > 1

    def text_arguments(self, states: list) -> dict[str, Any]:
        out = {"prompt_embeds": torch.cat([c.embeds for c in states]),
               "pooled_prompt_embeds": torch.cat([c.pooled for c in states])}
        if all(c.negative is not None for c in states):
            out.update(negative_prompt_embeds=torch.cat([c.negative for c in states]),
                       negative_pooled_prompt_embeds=torch.cat([c.negative_pooled for c in states]))
        return out

    def scheduler(self, base, named):
        from diffusers import FlowMatchEulerDiscreteScheduler

        if named.diffusers_class != "EulerDiscreteScheduler":  # the manifest check refuses these first
            raise VariantError(f"scheduler {named.name!r} does not work with {self.descriptor.title} models; use "
                               f"one of {', '.join(self.descriptor.schedulers or ())}")
        options = {key: value for key, value in named.options.items() if key in FLOW_OPTIONS}
        return FlowMatchEulerDiscreteScheduler.from_config(base.config, **options)

    def size_arguments(self, kind: str, size: tuple[int, int]) -> dict[str, Any]:
        # Every kind renders at the pipeline's default size unless told: an init image does not set it.
        return {"width": size[0], "height": size[1]}

    def control_arguments(self, kind: str, images: list[list], scales: list[float]) -> dict[str, Any]:
        # Every kind calls them control_image; several ControlNets take a list of row images per ControlNet.
        if len(scales) == 1:
            return {"control_image": [x[0] for x in images], "controlnet_conditioning_scale": scales[0]}
        return {"control_image": [[x[n] for x in images] for n in range(len(scales))],
                "controlnet_conditioning_scale": list(scales)}

    def call_arguments(self, pipe, row: dict[str, Any]) -> dict[str, Any]:
        # With prompt_embeds given the length only passes the pipeline's checks; it is the encoder's (recorded).
        return {"max_sequence_length": self.recorded(row)["max_sequence_length"]}

    def lora_text_encoders(self, pipe) -> list[str]:
        return [slot for slot in self.lora_text_slots if getattr(pipe, slot, None) is not None]

    def fits_controlnet(self, config: dict, pipe) -> bool:
        # Of this family and reading text states and patches of the model's widths.
        own = self.denoiser(pipe).config
        return self.claims_config(config) and all(config.get(key) == own.get(key) for key in
                                                  ("joint_attention_dim", "attention_head_dim", "num_attention_heads"))

    def resize_latents(self, pipe, latents: torch.Tensor, first: tuple[int, int],
                       size: tuple[int, int]) -> torch.Tensor:
        factor = pipe.vae_scale_factor
        return torch.nn.functional.interpolate(latents, size=(size[1] // factor, size[0] // factor), mode="bilinear",
                                               antialias=False)
