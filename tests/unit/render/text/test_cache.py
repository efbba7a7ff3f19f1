"""Encoded prompts kept per model and LoRA set: repeats skip the encoders, and give what encoding would give."""

import pytest
import torch

from sdbatch.render.text.cache import ConditioningCache
from sdbatch.render.text.embeddings import EmbeddingLibrary
from sdbatch.render.text.encode import PromptEncoder
from sdbatch.render.text.native import PipelinePrompts

NO_LORAS = "[]"


@pytest.fixture(scope="module")
def sd15():
    from sdbatch.render.tiny.sd15 import build_sd15_pipeline

    return build_sd15_pipeline(0)


@pytest.fixture(scope="module")
def flux():
    from sdbatch.render.families import for_model
    from sdbatch.render.tiny.flux import build_flux_pipeline

    pipe = build_flux_pipeline(0)
    return pipe, for_model(pipe)


def _counting(encoder_module: torch.nn.Module) -> list[int]:
    """The batch size of each call of a text encoder."""
    calls: list[int] = []
    encoder_module.register_forward_hook(lambda _m, args, _out: calls.append(len(args[0])))
    return calls


def _row(prompt: str, **extra) -> dict:
    return {"prompt": prompt, "negative_prompt": "blurry", **extra}


def _same(a, b) -> bool:
    return all(torch.equal(x, y) if x is not None else y is None for x, y in
               ((a.embeds, b.embeds), (a.negative, b.negative), (a.pooled, b.pooled),
                (a.negative_pooled, b.negative_pooled)))


@torch.inference_mode()
def test_repeated_prompts_skip_the_encoder_and_give_its_states(sd15):
    plain = PromptEncoder(sd15, EmbeddingLibrary(None))
    cache = ConditioningCache(plain, 1 << 30)
    calls = _counting(sd15.text_encoder)
    rows = [_row("a red fox"), _row("a lighthouse"), _row("a red fox")]
    first = cache.encode(rows, NO_LORAS)
    # One call, each distinct text once (prompt and negative side: 2 chunks per row).
    assert calls == [4]
    assert first[0] is first[2] and _same(first[1], plain.encode([rows[1]])[0])
    calls.clear()
    again = cache.encode([_row("a lighthouse"), _row("a red fox")], NO_LORAS)
    assert calls == [] and (cache.hits, cache.misses) == (3, 2)
    assert _same(again[1], plain.encode([rows[0]])[0])


@torch.inference_mode()
def test_what_the_states_depend_on_is_part_of_the_key(sd15):
    cache = ConditioningCache(PromptEncoder(sd15, EmbeddingLibrary(None)), 1 << 30)
    calls = _counting(sd15.text_encoder)
    base = cache.encode([_row("a red fox")], NO_LORAS)[0]
    others = [([_row("a red fox", negative_prompt="dark")], NO_LORAS),
              ([_row("a red fox", clip_skip=2)], NO_LORAS),
              ([_row("a red fox")], '[{"sha256": "ab", "weight": 1.0}]')]  # a LoRA may change the text encoder
    for rows, scope in others:
        calls.clear()
        state = cache.encode(rows, scope)[0]
        assert calls, (rows, scope)
        assert not _same(state, base) or scope != NO_LORAS
    assert cache.misses == 4 and cache.hits == 0


@torch.inference_mode()
def test_least_recently_used_states_go_beyond_the_budget_and_failures_are_not_kept(sd15):
    plain = PromptEncoder(sd15, EmbeddingLibrary(None))
    one = plain.encode([_row("a")])[0]
    size = sum(t.nbytes for t in (one.embeds, one.negative))
    cache = ConditioningCache(plain, 2 * size)
    for prompt in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" comes
        cache.encode([_row(prompt)], NO_LORAS)
    calls = _counting(sd15.text_encoder)
    cache.encode([_row("a")], NO_LORAS)
    cache.encode([_row("c")], NO_LORAS)
    assert calls == []
    cache.encode([_row("b")], NO_LORAS)
    assert calls == [2]
    calls.clear()
    too_deep = _row("a", clip_skip=99)
    for _ in range(2):  # a failed row fails again, and its batch mate still encodes
        failed, ok = cache.encode([too_deep, _row("d")], NO_LORAS)
        assert isinstance(failed, ValueError) and "clip_skip" in str(failed) and not isinstance(ok, Exception)
    assert cache.encode([_row("d")], NO_LORAS)[0] is ok


@torch.inference_mode()
def test_pipeline_prompts_share_states_where_the_pipeline_would_see_the_same_text(flux):
    pipe, family = flux
    plain = PipelinePrompts(pipe, family)
    cache = ConditioningCache(plain, 1 << 30)
    calls = _counting(pipe.text_encoder_2)
    row = {"prompt": "a (red:1.2) fox", "guidance_scale": 3.5, "max_sequence_length": 32}
    first = cache.encode([row], NO_LORAS)[0]
    assert _same(first, plain.encode([{**row, "prompt": "a red fox"}])[0])
    calls.clear()
    # The same words after the syntax is read; a negative prompt FLUX does not use without true CFG.
    cache.encode([{**row, "prompt": "a red fox", "negative_prompt": "dark"}], NO_LORAS)
    assert calls == []
    cache.encode([{**row, "max_sequence_length": 64}], NO_LORAS)
    assert calls == [1]
    cache.encode([{**row, "negative_prompt": "dark", "true_cfg_scale": 2.0}], NO_LORAS)
    assert calls == [1, 1, 1]  # the prompt and the negative, now guided with
