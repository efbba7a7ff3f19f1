"""FLUX.1: a transformer over 2x2-packed latents, CLIP-L's pooled vector and T5's states, distilled guidance (dev)
beside optional true CFG."""

from __future__ import annotations

from typing import Any

import torch

from sdbatch.errors import VariantError
from sdbatch.family import FLUX
from sdbatch.render.families.transformer import DiffusionTransformer


class Flux(DiffusionTransformer):
    descriptor = FLUX
    config_marks = ("axes_dims_rope",)  # its rotary embedding's axes: FLUX's transformers and ControlNets

    def words_for_config(self, config: dict) -> str:
        # dev is guidance-distilled (its transformer embeds the guidance); schnell is not.
        return "FLUX.1-dev" if config.get("guidance_embeds") else "FLUX.1-schnell"

    def derive(self, source, kind: str, dtype: torch.dtype, **components):
        # A Fill model's transformer reads the masked image beside the noise: no other pipeline can run it.
        if type(source).__name__ in self.descriptor.inpaint_models:
            if kind == "inpaint" and not components:
                return source
            raise VariantError(f"{type(source).__name__} renders inpainting rows only (an init_image and a "
                               "mask_image), without ControlNets; use the base FLUX.1 model for this row")
        return super().derive(source, kind, dtype, **components)

    def needs_negative(self, row: dict[str, Any]) -> bool:
        return float(row.get("true_cfg_scale") or 1) > 1

    def encode_prompts(self, pipe, prompts: list[str], negatives: list[str] | None, max_sequence_length: int):
        def encoded(texts: list[str]):
            embeds, pooled, _ids = pipe.encode_prompt(prompt=texts, prompt_2=None, device=pipe._execution_device,
                                                      max_sequence_length=max_sequence_length)
            return embeds, pooled

        embeds, pooled = encoded(prompts)
        negative, negative_pooled = encoded(negatives) if negatives is not None else (None, None)
        return embeds, pooled, negative, negative_pooled

    def recorded(self, row: dict[str, Any]) -> dict[str, Any]:
        return {**super().recorded(row), "true_cfg_scale": float(row.get("true_cfg_scale") or 1)}

    def call_arguments(self, pipe, row: dict[str, Any]) -> dict[str, Any]:
        out = super().call_arguments(pipe, row)
        scale = float(row.get("true_cfg_scale") or 1)
        if scale > 1:
            if "true_cfg_scale" not in _call_parameters(pipe):
                raise VariantError(f"diffusers' {type(pipe).__name__} has no true CFG (true_cfg_scale); render "
                                   "these rows with true_cfg_scale 1 or without ControlNets")
            out["true_cfg_scale"] = scale
        return out

    def lora_state_dict(self, pipeline_class, tensors: dict) -> tuple[dict, dict | None]:
        # FLUX's loader converts kohya, XLabs and BFL files; it returns the alphas only when asked.
        return pipeline_class.lora_state_dict(tensors, return_alphas=True)

    def load_denoiser_lora(self, pipe, state_dict: dict, **options) -> None:
        pipe.load_lora_into_transformer(state_dict, transformer=self.denoiser(pipe), **options)

    def load_controlnet(self, folder, dtype: torch.dtype) -> torch.nn.Module:
        from diffusers import FluxControlNetModel

        return FluxControlNetModel.from_pretrained(str(folder), dtype=dtype)

    def resize_latents(self, pipe, latents: torch.Tensor, first: tuple[int, int],
                       size: tuple[int, int]) -> torch.Tensor:
        # The first pass's latents come packed (2x2 patches as tokens); the img2img pipeline takes them unpacked.
        unpacked = pipe._unpack_latents(latents, first[1], first[0], pipe.vae_scale_factor)
        return super().resize_latents(pipe, unpacked, first, size)


def _call_parameters(pipe) -> set[str]:
    import inspect

    return set(inspect.signature(type(pipe).__call__).parameters)
