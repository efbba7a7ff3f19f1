"""A tiny random-weight FLUX-style diffusers folder, offline: a family sdbatch does not render (yet), to refuse."""

from __future__ import annotations

import pathlib
import string

import torch

# patch_size 1 over 16 latent channels packed 2x2 = 64 input channels; head dim 16 = the rope axes' sum.
TRANSFORMER = {"patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 2, "attention_head_dim": 16,
               "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32,
               "axes_dims_rope": (4, 6, 6), "guidance_embeds": True}
T5_MAX_TOKENS = 32


def t5_tokenizer():
    """A T5 tokenizer with no files: single characters as Unigram pieces, T5's special ids (pad 0, </s> 1, unk 2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in string.ascii_letters + string.digits + string.punctuation]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=T5_MAX_TOKENS)


def build_flux_pipeline(seed: int = 0):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from sdbatch.render.tiny.sd15 import make_tokenizer, text_encoder_config, vae_config

    tokenizer, tokenizer_2 = make_tokenizer(), t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**TRANSFORMER)
        vae = AutoencoderKL(**{**vae_config(), "latent_channels": 16, "shift_factor": 0.0})
        text_encoder = CLIPTextModel(text_encoder_config(tokenizer))
        text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                                 num_heads=4, pad_token_id=0, eos_token_id=1))
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                        transformer=transformer)


def write_tiny_flux(folder: str | pathlib.Path) -> pathlib.Path:
    """The tiny FLUX pipeline saved with save_pretrained (model_index.json names FluxPipeline)."""
    target = pathlib.Path(folder)
    build_flux_pipeline().save_pretrained(target, safe_serialization=True)
    return target
