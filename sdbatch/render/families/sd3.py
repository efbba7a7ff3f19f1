"""Stable Diffusion 3/3.5: an MMDiT transformer conditioned on two CLIP encoders and T5, classifier-free guided."""

from __future__ import annotations

import torch

from sdbatch.family import SD3
from sdbatch.render.families.transformer import DiffusionTransformer


class StableDiffusion3(DiffusionTransformer):
    descriptor = SD3
    lora_text_slots = ("text_encoder", "text_encoder_2")
    config_marks = ("caption_projection_dim",)  # its joint blocks project captions: SD3's transformers, ControlNets

    def words_for_config(self, config: dict) -> str:
        # 3.5 Medium adds self-attention to its first joint blocks (MMDiT-X); Large and 3.0 have none.
        return "SD3.5 Medium" if config.get("dual_attention_layers") else "SD3/3.5"

    def encode_prompts(self, pipe, prompts: list[str], negatives: list[str] | None, max_sequence_length: int):
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=pipe._execution_device,
            do_classifier_free_guidance=negatives is not None, negative_prompt=negatives,
            max_sequence_length=max_sequence_length)
        return embeds, pooled, negative, negative_pooled

    def load_denoiser_lora(self, pipe, state_dict: dict, **options) -> None:
        options.pop("network_alphas", None)  # SD3's loader reads diffusers/PEFT files only: alphas live in metadata
        pipe.load_lora_into_transformer(state_dict, transformer=self.denoiser(pipe), **options)

    def lora_state_dict(self, pipeline_class, tensors: dict) -> tuple[dict, dict | None]:
        return pipeline_class.lora_state_dict(tensors), None

    def load_controlnet(self, folder, dtype: torch.dtype) -> torch.nn.Module:
        from diffusers import SD3ControlNetModel

        return SD3ControlNetModel.from_pretrained(str(folder), dtype=dtype)
