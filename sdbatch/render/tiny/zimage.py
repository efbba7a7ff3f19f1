"""The tiny random-weight Z-Image-Turbo-like pipeline: a Qwen3 text encoder, a single-stream transformer, FLUX's VAE."""

from __future__ import annotations

import torch

from sdbatch.render.tiny.flux import flux_vae_config
from sdbatch.render.tiny.sd15 import with_certain_posterior

QWEN_WIDTH = 32  # the text encoder's hidden size = the transformer's cap_feat_dim (Qwen3-4B's 2560)
# Qwen's specials: <|endoftext|> pads (and ends), the two others frame each chat turn.
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# What Qwen3's chat template writes for one user message with the generation prompt and thinking on (how Z-Image's
# pipeline calls it): "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n". Thinking off would add an
# empty think block; the pipeline never asks for that, but the template takes the flag as Qwen3's does.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def make_qwen_tokenizer():
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    # No merges: every word splits into byte-level symbols, which the vocabulary always covers (any text, no files).
    # Sorted because alphabet() comes from a set; ids must not vary between runs.
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: n for n, token in enumerate([*symbols, *SPECIALS])}
    return Qwen2Tokenizer(vocab=vocab, merges=[], chat_template=CHAT_TEMPLATE, model_max_length=131072,
                          extra_special_tokens=list(SPECIALS[1:]))


def text_encoder_config(tokenizer):
    from transformers import Qwen3Config

    # Z-Image reads the second-to-last hidden states: two layers give it the first layer's, unnormalised.
    return Qwen3Config(vocab_size=len(tokenizer), hidden_size=QWEN_WIDTH, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)


def transformer_config() -> dict:
    # 2x2 patches of 16 latent channels, head dim 16 = the rope axes' sum (8 for the sequence, 4 each for height and
    # width). A caption takes up to 512 positions on the first axis before the image's, hence its 1024; 128 patches a
    # side allows 512 px (the tiny VAE's factor is 2).
    return {"all_patch_size": (2,), "all_f_patch_size": (1,), "in_channels": 16, "dim": 64, "n_layers": 2,
            "n_refiner_layers": 1, "n_heads": 4, "n_kv_heads": 4, "qk_norm": True, "cap_feat_dim": QWEN_WIDTH,
            "axes_dims": (8, 4, 4), "axes_lens": (1024, 128, 128)}


def scheduler_config() -> dict:
    # Z-Image-Turbo's scheduler: a fixed shift of 3; the pipeline passes its own sigmas.
    return {"num_train_timesteps": 1000, "use_dynamic_shifting": False, "shift": 3.0}


def build_zimage_pipeline(seed: int):
    """The Z-Image pipeline in memory, its weights drawn from a private RNG stream seeded with `seed`."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Model

    tokenizer = make_qwen_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = ZImageTransformer2DModel(**transformer_config())
        with torch.no_grad():  # torch.empty in the constructor: whatever memory held, NaN included
            transformer.x_pad_token.normal_()
            transformer.cap_pad_token.normal_()
        vae = with_certain_posterior(AutoencoderKL(**flux_vae_config()))
        text_encoder = Qwen3Model(text_encoder_config(tokenizer)).eval()
    return ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler_config()), vae=vae,
                          text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
