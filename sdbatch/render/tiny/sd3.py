"""The tiny random-weight SD3/3.5-style pipeline: two CLIP encoders and T5, an MMDiT transformer, 16-channel VAE."""

from __future__ import annotations

import torch

from sdbatch.render.tiny.sd15 import make_tokenizer, text_encoder_config, vae_config, with_certain_posterior
from sdbatch.render.tiny.t5 import make_t5_tokenizer, t5_encoder_config

HIDDEN = 32  # text_encoder's width and projection (CLIP-L's 768)
HIDDEN_2 = 48  # text_encoder_2's (OpenCLIP bigG's 1280): wider, as in tiny:sdxl
# T5's width (T5-XXL's 4096) = joint_attention_dim. SD3 pads the two CLIP states, side by side (80 wide), to it.
T5_WIDTH = 96


def transformer_config() -> dict:
    # sample_size 32 latents * vae_scale_factor 2 = 64 px, the pipeline's default render size. patch_size 2 as SD3;
    # pos_embed_max_size 96 patches allows up to 384 px. qk_norm as SD3.5 (SD3.0 has none).
    return {"sample_size": 32, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 2,
            "attention_head_dim": 8, "num_attention_heads": 4, "joint_attention_dim": T5_WIDTH,
            "caption_projection_dim": 32, "pooled_projection_dim": HIDDEN + HIDDEN_2, "pos_embed_max_size": 96,
            "qk_norm": "rms_norm"}


def sd3_vae_config() -> dict:
    # SD3's VAE: 16 latent channels, no quant convs, latents normalised as (z - shift) * scale. Seed 0's encoder
    # gives latents of mean near 0.02 and standard deviation near 0.32: normalised to about unit variance.
    return {**vae_config(), "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False,
            "scaling_factor": 3.1, "shift_factor": 0.02, "force_upcast": True}


def scheduler_config() -> dict:
    # SD3's scheduler: a fixed shift of 3.
    return {"num_train_timesteps": 1000, "shift": 3.0}


def build_sd3_pipeline(seed: int):
    """The SD3 pipeline in memory, its weights drawn from a private RNG stream seeded with `seed`."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    tokenizer, tokenizer_2, tokenizer_3 = make_tokenizer(), make_tokenizer(), make_t5_tokenizer()
    config = text_encoder_config(tokenizer)
    config.projection_dim = HIDDEN
    config_2 = text_encoder_config(tokenizer_2)
    config_2.hidden_size, config_2.intermediate_size, config_2.projection_dim = HIDDEN_2, 53, HIDDEN_2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(**transformer_config())
        vae = with_certain_posterior(AutoencoderKL(**sd3_vae_config()))
        text_encoder = CLIPTextModelWithProjection(config)
        text_encoder_2 = CLIPTextModelWithProjection(config_2)
        # eval, as from_pretrained leaves a model: T5's dropout (0.1, as in T5 v1.1) would vary every render.
        text_encoder_3 = T5EncoderModel(t5_encoder_config(tokenizer_3, T5_WIDTH)).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler_config()), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
