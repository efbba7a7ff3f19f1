"""The tiny random-weight FLUX.1-dev-style pipeline: CLIP and T5 encoders, a transformer, a 16-channel VAE; CPU-fast."""

from __future__ import annotations

import torch

from sdbatch.render.tiny.sd15 import make_tokenizer, text_encoder_config, vae_config, with_certain_posterior
from sdbatch.render.tiny.t5 import make_t5_tokenizer, t5_encoder_config

HIDDEN = 32  # CLIP's width, so its pooled output's (pooled_projection_dim)
T5_WIDTH = 32  # joint_attention_dim


def transformer_config() -> dict:
    # FLUX packs 2x2 patches of 16 latent channels into 64 input channels (patch_size 1 on the packed grid).
    # Head dim 16 = the rope axes' sum; guidance_embeds as FLUX.1-dev (schnell has none).
    return {"patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 2, "attention_head_dim": 16,
            "num_attention_heads": 2, "joint_attention_dim": T5_WIDTH, "pooled_projection_dim": HIDDEN,
            "axes_dims_rope": (4, 6, 6), "guidance_embeds": True}


def flux_vae_config() -> dict:
    # FLUX.1's VAE: 16 latent channels, no quant convs, latents normalised as (z - shift) * scale. Seed 0's encoder
    # gives latents of mean near 0.02 and standard deviation near 0.33: normalised to about unit variance.
    return {**vae_config(), "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False,
            "scaling_factor": 3.0, "shift_factor": 0.02, "force_upcast": True}


def scheduler_config() -> dict:
    # FLUX.1-dev's scheduler: the shift grows with the image's token count, from 0.5 at 256 tokens to 1.15 at 4096.
    return {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
            "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}


def build_flux_pipeline(seed: int):
    """The FLUX.1 pipeline in memory, its weights drawn from a private RNG stream seeded with `seed`.

    FluxPipeline's default size is 128 * vae_scale_factor (a constant, not config): 256 px here, so render 64x64
    by asking for it.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    tokenizer, tokenizer_2 = make_tokenizer(), make_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**transformer_config())
        vae = with_certain_posterior(AutoencoderKL(**flux_vae_config()))
        text_encoder = CLIPTextModel(text_encoder_config(tokenizer))
        # eval, as from_pretrained leaves a model: T5's dropout (0.1, as in T5 v1.1) would vary every render.
        text_encoder_2 = T5EncoderModel(t5_encoder_config(tokenizer_2, T5_WIDTH)).eval()
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler_config()), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        transformer=transformer)
