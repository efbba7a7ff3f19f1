"""The tiny T5 tokenizer and encoder config (FLUX.1's and SD3's third text encoder), built in memory, offline."""

from __future__ import annotations

import string

# The length T5-XXL's tokenizer ships with in FLUX.1 and SD3, and FLUX's default max_sequence_length.
MAX_TOKENS = 512


def pieces() -> list[tuple[str, float]]:
    """T5's special ids first (pad 0, </s> 1, unk 2), then single characters as Unigram pieces.

    Printable ASCII and Latin-1 cover prompts' words and accents; other symbols (emoji) become <unk>,
    as they do in the real T5 vocabulary.
    """
    latin_1 = [chr(c) for c in range(0xA1, 0x100) if chr(c).isprintable()]
    characters = string.ascii_letters + string.digits + string.punctuation + "".join(latin_1)
    return [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)] + [(c, -2.0) for c in characters]


def make_t5_tokenizer():
    from transformers import T5Tokenizer

    # transformers 5's T5Tokenizer builds the tokenizers-library Unigram model (and T5's Metaspace and
    # "$A </s>" template) from this list; no sentencepiece file. No sentinel <extra_id_*>: encoders never see them.
    return T5Tokenizer(vocab=pieces(), extra_ids=0, model_max_length=MAX_TOKENS)


def t5_encoder_config(tokenizer, d_model: int):
    from transformers import T5Config

    # T5 v1.1 (what FLUX.1 and SD3 use): gated GELU, untied embeddings. Relative position buckets, so any
    # sequence length runs, 512 included.
    return T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
