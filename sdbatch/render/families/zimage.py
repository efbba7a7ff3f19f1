"""Z-Image (Tongyi-MAI's Z-Image-Turbo and Z-Image): a single-stream transformer reading a Qwen3 encoder's states,
one tensor per prompt at its own length, guided only when guidance_scale is above 0."""

from __future__ import annotations

from typing import Any

import torch

from sdbatch.errors import VariantError
from sdbatch.family import ZIMAGE
from sdbatch.render.families.transformer import DiffusionTransformer

# Config keys of Z-Image's transformers (the caption width) and of its ControlNets (where their blocks feed in).
TRANSFORMER_MARK, CONTROLNET_MARK = "cap_feat_dim", "control_layers_places"
MIN_VAE_SIDE = 64  # a VAE sample_size below this is no model's native size (AutoencoderKL's default is 32)


class ZImage(DiffusionTransformer):
    descriptor = ZIMAGE
    lora_text_slots = ()  # diffusers loads Z-Image LoRAs into the transformer only

    def words_for_config(self, config: dict) -> str:
        return "Z-Image"

    def claims_config(self, config: dict) -> bool:
        return TRANSFORMER_MARK in config or CONTROLNET_MARK in config

    def native_size(self, pipe) -> tuple[int, int]:
        # The pipeline's own default is a constant 1024; the VAE's config says what the model is made for (Z-Image
        # ships FLUX's VAE, sample_size 1024), so a small test model renders at its small size. Under 64 px is
        # AutoencoderKL's default of 32 (a config that names none): the family's own then.
        side = int(getattr(pipe.vae.config, "sample_size", 0) or 0)
        side = side if side >= MIN_VAE_SIDE else self.descriptor.native_size
        return side, side

    def derive(self, source, kind: str, dtype: torch.dtype, **components):
        pipe = super().derive(source, kind, dtype, **components)
        if kind == "img2img":
            # A hires pass hands it latents as its image; its processor, told of 4 latent channels, would take these
            # 16 for pixels: warned about each call, and resized to its 16-pixel grid where they are off it (FLUX's
            # img2img is told its latent channels).
            from diffusers.image_processor import VaeImageProcessor

            pipe.image_processor = VaeImageProcessor(vae_scale_factor=pipe.vae_scale_factor * 2,
                                                     vae_latent_channels=pipe.vae.config.latent_channels)
        return pipe

    def needs_negative(self, row: dict[str, Any]) -> bool:
        # The pipeline guides when guidance_scale > 0 (Z-Image-Turbo renders at 0, its negative never read).
        return float(row["guidance_scale"]) > 0

    def encode_prompts(self, pipe, prompts: list[str], negatives: list[str] | None, max_sequence_length: int):
        # One tensor per prompt, its padding dropped (the pipeline's own form): rows of any lengths share a call.
        # Copies: the pipeline writes each prompt's chat-templated text back into the list it is given.
        embeds, negative = pipe.encode_prompt(
            prompt=list(prompts), device=pipe._execution_device, do_classifier_free_guidance=negatives is not None,
            negative_prompt=None if negatives is None else list(negatives), max_sequence_length=max_sequence_length)
        return embeds, None, negative if negatives is not None else None, None

    def text_arguments(self, states: list) -> dict[str, Any]:
        out = {"prompt_embeds": [c.embeds[0] for c in states]}
        if all(c.negative is not None for c in states):
            out["negative_prompt_embeds"] = [c.negative[0] for c in states]
        return out

    def lora_state_dict(self, pipeline_class, tensors: dict) -> tuple[dict, dict | None]:
        # Z-Image's loader converts kohya and ComfyUI files, scaling by their alphas itself.
        return pipeline_class.lora_state_dict(tensors), None

    def load_denoiser_lora(self, pipe, state_dict: dict, **options) -> None:
        options.pop("network_alphas", None)  # its loader takes none: alphas live in metadata or are applied
        pipe.load_lora_into_transformer(state_dict, transformer=self.denoiser(pipe), **options)

    def load_controlnet(self, folder, dtype: torch.dtype) -> torch.nn.Module:
        from diffusers import ZImageControlNetModel

        return ZImageControlNetModel.from_pretrained(str(folder), dtype=dtype)

    def fits_controlnet(self, config: dict, pipe) -> bool:
        # Its blocks run beside the transformer's at its width and feed the layers it names; its control latents
        # have at least the latent channels (2.0's inpainting nets take more, zero-padded by the pipeline).
        own = self.denoiser(pipe).config
        return (CONTROLNET_MARK in config
                and all(config.get(key) == own.get(key) for key in ("dim", "n_heads", "n_kv_heads"))
                and int(config.get("control_in_dim") or 0) >= int(own["in_channels"])
                and max(config[CONTROLNET_MARK]) < int(own["n_layers"])
                and max(config.get("control_refiner_layers_places") or [0]) < int(own["n_refiner_layers"]))

    def with_controlnets(self, base, models: list[torch.nn.Module], dtype: torch.dtype):
        if len(models) > 1:  # the manifest check refuses these first
            raise VariantError(f"diffusers' {self.descriptor.controlnet_pipelines.txt2img} takes one ControlNet; "
                               "use one per row")
        # The pipeline shares the transformer's embedders and refiners into the ControlNet (from_transformer).
        return super().with_controlnets(base, models, dtype)
