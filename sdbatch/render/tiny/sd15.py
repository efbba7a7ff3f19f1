"""The tiny random-weight SD1.5-style pipeline: CLIP tokenizer from a byte vocabulary, UNet, VAE; offline, CPU-fast."""

from __future__ import annotations

import torch

MAX_TOKENS = 77  # SD1.5's prompt length, so truncation behaves as it does on real models
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def unet_config() -> dict:
    # sample_size 32 latents * vae_scale_factor 2 = 64 px, the pipeline's default render size.
    return {
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }


def vae_config() -> dict:
    # Two blocks give the pipeline a vae_scale_factor of 2**(2-1) = 2.
    return {
        "sample_size": 64,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (32, 64),
        "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
        "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 32,
        # What SD's 0.18215 is for its VAE: scaled latents of about unit variance (this random encoder's latents
        # have a standard deviation near 0.22), so img2img noise and the UNet's steps are on the latents' scale.
        "scaling_factor": 4.5,
    }


def with_certain_posterior(vae):
    """Trained SD VAEs encode an image to an all but certain latent (a tiny posterior variance); random weights
    give a variance near 1, and img2img would start from noise. The log-variance half of the encoder's output
    is made constant and very low, so encoding behaves as a trained VAE's does."""
    last = vae.quant_conv if getattr(vae, "quant_conv", None) is not None else vae.encoder.conv_out
    half = last.out_channels // 2
    with torch.no_grad():
        last.weight[half:] = 0
        last.bias[half:] = -30.0  # the clamp's floor: a standard deviation of exp(-15)
    return vae


def scheduler_config() -> dict:
    # The scheduler config Stable Diffusion 1.5 ships with.
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "skip_prk_steps": True,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "clip_sample": False,
    }


def byte_vocab() -> dict[str, int]:
    """Every byte-level symbol, alone and as a word end, then the two specials (CLIP's id order)."""
    from tokenizers import pre_tokenizers

    # Sorted because alphabet() comes from a set; ids must not vary between runs.
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = symbols + [s + "</w>" for s in symbols] + [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}


def make_tokenizer():
    from transformers import CLIPTokenizer

    # No merges: every word splits into single byte symbols, which the vocab always covers.
    return CLIPTokenizer(vocab=byte_vocab(), merges=[], model_max_length=MAX_TOKENS)


def text_encoder_config(tokenizer):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_sd15_pipeline(seed: int):
    """The SD1.5-style pipeline in memory, its weights drawn from a private RNG stream seeded with `seed`."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    tokenizer = make_tokenizer()
    # fork_rng keeps the caller's global RNG untouched; devices=[] avoids touching CUDA state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config())
        vae = with_certain_posterior(AutoencoderKL(**vae_config()))
        text_encoder = CLIPTextModel(text_encoder_config(tokenizer))
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        # from_config, unlike the constructor, keeps clip_sample, so a later swap to DDIM doesn't clip.
        scheduler=PNDMScheduler.from_config(scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
