"""The tiny random-weight SDXL-style pipeline: two text encoders, a text_time UNet, offline and CPU-fast."""

from __future__ import annotations

import torch

from sdbatch.render.tiny.sd15 import (
    make_tokenizer,
    scheduler_config,
    text_encoder_config,
    vae_config,
    with_certain_posterior,
)
from sdbatch.render.tiny.sd15 import (
    unet_config as sd15_unet_config,  # the base this one extends
)

HIDDEN = 32  # text_encoder's width (tiny:sd15's encoder)
# text_encoder_2's width: wider than the first, as OpenCLIP bigG (1280) is than CLIP-L (768). Equal widths
# would also make diffusers' single-file loader take the first encoder's weights for the second.
HIDDEN_2 = 48
TIME_EMBED = 8  # SDXL embeds each of its 6 size/crop numbers into this many channels


def unet_config() -> dict:
    # tiny:sd15's UNet (64 px) with SDXL's conditioning: both encoders' states concatenated, linear
    # projections, and the add-embedding of 6 time ids * TIME_EMBED plus text_encoder_2's pooled projection.
    return {**sd15_unet_config(), "cross_attention_dim": HIDDEN + HIDDEN_2, "attention_head_dim": (2, 4),
            "use_linear_projection": True, "transformer_layers_per_block": (1, 1),
            "addition_embed_type": "text_time", "addition_time_embed_dim": TIME_EMBED,
            "projection_class_embeddings_input_dim": 6 * TIME_EMBED + HIDDEN_2}


def sdxl_scheduler_config() -> dict:
    # SDXL ships Euler with the SD noise schedule; timestep spacing "leading" as in its repo.
    return {**scheduler_config(), "timestep_spacing": "leading", "interpolation_type": "linear"}


def build_sdxl_pipeline(seed: int):
    """The SDXL pipeline in memory, its weights drawn from a private RNG stream seeded with `seed`."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = make_tokenizer(), make_tokenizer()
    config_2 = text_encoder_config(tokenizer_2)
    config_2.hidden_size, config_2.intermediate_size, config_2.projection_dim = HIDDEN_2, 53, HIDDEN_2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config())
        # SDXL's VAE config flags fp16 overflow; fastpath keeps such a VAE in fp32 on fp16 cards.
        # This seed's encoder gives latents of standard deviation near 0.29: scaled to about unit variance.
        vae = with_certain_posterior(AutoencoderKL(**{**vae_config(), "scaling_factor": 3.5}, force_upcast=True))
        text_encoder = CLIPTextModel(text_encoder_config(tokenizer))
        text_encoder_2 = CLIPTextModelWithProjection(config_2)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=EulerDiscreteScheduler.from_config(sdxl_scheduler_config()),
        # The watermark needs the invisible-watermark package, and would alter pixels of a dataset.
        add_watermarker=False,
    )
