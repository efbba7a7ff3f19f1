"""Text conditioning without the UNet: equal to diffusers' for plain prompts, A1111's chunks, embedding files."""

import io

import pytest
import torch
from safetensors.torch import save, save_file

from sdbatch.a1111.syntax import Fragment, parse
from sdbatch.errors import VariantError
from sdbatch.render.text.chunks import CHUNK_TOKENS, chunked, framed
from sdbatch.render.text.embeddings import EmbeddingLibrary, read_embedding
from sdbatch.render.text.encode import PromptEncoder

COMMA = 99


@pytest.fixture(scope="module")
def pipelines():
    from sdbatch.render.tiny.sd15 import build_sd15_pipeline
    from sdbatch.render.tiny.sdxl import build_sdxl_pipeline

    return {"sd15": build_sd15_pipeline(0), "sdxl": build_sdxl_pipeline(0)}


@torch.inference_mode()
def test_plain_prompts_encode_exactly_as_diffusers_does(pipelines):
    """So images of prompts without A1111 syntax are what they were when diffusers encoded them."""
    sd15, sdxl = pipelines["sd15"], pipelines["sdxl"]
    rows = [{"prompt": "a red fox", "negative_prompt": "blurry"}]
    ours = PromptEncoder(sd15, EmbeddingLibrary(None)).encode(rows)[0]
    theirs, negative = sd15.encode_prompt(["a red fox"], "cpu", 1, True, ["blurry"])
    assert torch.equal(ours.embeds, theirs) and torch.equal(ours.negative, negative) and ours.pooled is None
    xl = PromptEncoder(sdxl, EmbeddingLibrary(None))
    ours = xl.encode(rows)[0]
    embeds, negative, pooled, negative_pooled = sdxl.encode_prompt(["a red fox"], device="cpu",
                                                                   negative_prompt=["blurry"])
    # Equal up to float rounding: the prompt and the negative go through the encoders in one batch here.
    assert torch.allclose(ours.embeds, embeds, atol=1e-5) and torch.allclose(ours.negative, negative, atol=1e-5)
    assert torch.allclose(ours.pooled, pooled) and torch.allclose(ours.negative_pooled, negative_pooled)
    # SDXL's clip skip as A1111 and Forge read it: 2 is the penultimate layer SDXL always uses (see below for 3).
    two, one = xl.encode([{"prompt": "a red fox", "clip_skip": 2}, {"prompt": "a red fox"}])
    assert torch.equal(two.embeds, one.embeds) and torch.allclose(one.embeds, embeds, atol=1e-5)
    # No negative prompt: zeros, states and pooled vector, as A1111 (and diffusers without a negative prompt);
    # a "plain" row keeps diffusers' reading of "": encoded.
    _, zeros, _, zero_pooled = sdxl.encode_prompt(["a red fox"], device="cpu")
    assert not zeros.any() and torch.equal(one.negative, zeros) and torch.equal(one.negative_pooled, zero_pooled)
    plain = xl.encode([{"prompt": "a red fox", "prompt_syntax": "plain"}])[0]
    _, negative, _, negative_pooled = sdxl.encode_prompt(["a red fox"], device="cpu", negative_prompt=[""])
    assert negative.any() and torch.allclose(plain.negative, negative, atol=1e-5)
    assert torch.allclose(plain.negative_pooled, negative_pooled, atol=1e-5)


def test_sdxl_clip_skip_goes_deeper_than_the_penultimate_layer_only_from_3():
    """Forge's rule (A1111 keeps SDXL at the penultimate layer): layer -max(N, 2), so 3 is diffusers' clip_skip=1;
    SD1.x takes layer -N through the final norm. The tiny encoders have two layers: the rule on labelled layers."""
    from types import SimpleNamespace

    from sdbatch.render.text.encode import _layer

    layers = [torch.full((1, 2), float(n)) for n in range(5)]  # hidden_states[0] is the embeddings' output
    output = SimpleNamespace(hidden_states=layers, last_hidden_state=torch.full((1, 2), 9.0))
    sdxl = [float(_layer(None, output, 0, skip, penultimate=True)[0]) for skip in (1, 2, 3, 4)]
    assert sdxl == [3.0, 3.0, 2.0, 1.0]
    plain = SimpleNamespace(final_layer_norm=lambda x: x + 100)
    assert [float(_layer(plain, output, 0, skip, penultimate=False)[0]) for skip in (1, 2, 3)] == [9.0, 103.0, 102.0]


@torch.inference_mode()
def test_a_long_prompt_is_three_chunks_whose_first_two_do_not_see_the_end(pipelines):
    encoder = PromptEncoder(pipelines["sd15"], EmbeddingLibrary(None))
    long = "word " * 40  # 200 byte tokens on the tiny tokenizer
    a, b = encoder.encode([{"prompt": long + "red door"}, {"prompt": long + "blue cat"}])
    assert a.length == b.length == 3 * 77 and a.negative.shape == a.embeds.shape  # the negative padded to match
    assert torch.equal(a.embeds[:, :154], b.embeds[:, :154]) and not torch.equal(a.embeds, b.embeds)


def test_chunks_break_at_75_tokens_after_a_nearby_comma_and_at_break():
    def tokenize(text):
        return [COMMA if c == "," else ord(c) for c in text.replace(" ", "")]

    words = "a" * 70 + "," + "b" * 10  # the chunk fills 4 tokens after the comma: the b's move on together
    chunks = chunked(parse(words), tokenize, COMMA)
    assert [len(c.tokens) for c in chunks] == [71, 10] and chunks[0].tokens[-1] == COMMA
    far = "a" * 10 + "," + "b" * 80  # the comma is too far back: cut at 75
    assert [len(c.tokens) for c in chunked(parse(far), tokenize, COMMA)] == [75, 16]
    broken = chunked(parse("(ab:1.5) BREAK c"), tokenize, COMMA)
    assert [c.tokens for c in broken] == [[97, 98], [ord("c")]] and broken[0].weights == [1.5, 1.5]
    assert [c.tokens for c in chunked([Fragment("", 1.0)], tokenize, COMMA)] == [[]]  # an empty prompt: one chunk
    ids, weights = framed(broken[0], 1, 2, 0)
    assert ids[:4] == [1, 97, 98, 2] and len(ids) == CHUNK_TOKENS + 2 and weights[1:3] == [1.5, 1.5]


def test_empty_fragments_add_no_tokens_and_a_break_inside_brackets_still_cuts():
    def tokenize(text):
        return [ord(c) for c in text.replace(" ", "")]

    kept = chunked(parse("(a)(\\:0.5)(b)"), tokenize, COMMA)  # an empty fragment at 0.5 between the two
    assert [c.tokens for c in kept] == [[97, 98]] and kept[0].weights == [1.1, 1.1]
    cut = chunked(parse("(a BREAK b)"), tokenize, COMMA)
    assert [c.tokens for c in cut] == [[97], [98]] and cut[1].weights == [1.1]


@torch.inference_mode()
def test_a1111_strict_rows_encode_exactly_as_a1111_rows(pipelines):
    encoder = PromptEncoder(pipelines["sdxl"], EmbeddingLibrary(None))
    prompt = "a (red:1.3) fox BREAK [snow]"
    lenient, strict = (encoder.encode([{"prompt": prompt, "prompt_syntax": s}])[0] for s in ("a1111", "a1111-strict"))
    assert torch.equal(lenient.embeds, strict.embeds) and torch.equal(lenient.pooled, strict.pooled)
    assert not strict.negative.any() and not strict.negative_pooled.any()  # no negative prompt: zeros, as a1111


def test_an_embedding_takes_its_vector_count_of_slots_and_moves_whole_to_the_next_chunk():
    def find(tokens, position):
        return ("emb", 2, 5) if tokens[position:position + 2] == [ord("x"), ord("y")] else None

    chunks = chunked(parse("a" * 72 + "xy b"), lambda t: [ord(c) for c in t.replace(" ", "")], None, find)
    assert [len(c.tokens) for c in chunks] == [72, 6] and chunks[1].fixes == [(0, "emb")]
    assert chunks[1].tokens[:5] == [0] * 5


def test_embedding_files_in_each_format_read_and_a_bad_one_says_what_it_expected(tmp_path):
    vectors = torch.randn(3, 8)
    a1111_pt = io.BytesIO()
    torch.save({"string_to_param": {"*": vectors}, "name": "x", "step": 100}, a1111_pt)
    diffusers_bin = io.BytesIO()
    torch.save({"<x>": vectors[0]}, diffusers_bin)
    cases = [(a1111_pt.getvalue(), ".pt", (3, 8)), (save({"emb_params": vectors}), ".safetensors", (3, 8)),
             (diffusers_bin.getvalue(), ".bin", (1, 8))]
    for data, suffix, shape in cases:
        assert tuple(read_embedding("x", data, suffix).vectors[""].shape) == shape
    xl = read_embedding("x", save({"clip_l": vectors, "clip_g": torch.randn(3, 12)}), ".safetensors")
    assert xl.for_encoder(1, 2, 12).shape == (3, 12)
    with pytest.raises(VariantError, match="width 8, but this model's text encoder is 16 wide"):
        read_embedding("x", save({"emb_params": vectors}), ".safetensors").for_encoder(0, 1, 16)
    with pytest.raises(VariantError, match="no embedding vectors found"):
        read_embedding("x", save({"a": vectors, "b": vectors.clone()}), ".safetensors")
    save_file({"emb_params": vectors}, tmp_path / "Easy Neg.safetensors")
    (tmp_path / "notes.txt").write_text("not an embedding")
    for folder in ("negatives", ".trash"):  # A1111 reads subfolders, not hidden ones
        (tmp_path / folder).mkdir()
        save_file({"emb_params": vectors}, tmp_path / folder / "badhands.safetensors")
    save_file({"emb_params": vectors}, tmp_path / "negatives" / "Easy Neg.safetensors")
    assert EmbeddingLibrary(str(tmp_path)).files() == {"Easy Neg": "Easy Neg.safetensors",
                                                       "badhands": "negatives/badhands.safetensors"}


@torch.inference_mode()
def test_a_batch_the_encoder_cannot_take_is_encoded_row_by_row_so_only_the_bad_row_fails(pipelines):
    class Failing(PromptEncoder):
        def _encoded(self, plans, good):
            if any(plan.clip_skip == 2 for plan in good):
                raise RuntimeError("cannot encode this row")
            return super()._encoded(plans, good)

    fine, bad = Failing(pipelines["sd15"], EmbeddingLibrary(None)).encode(
        [{"prompt": "a fox"}, {"prompt": "a fox", "clip_skip": 2}])
    assert fine.length == 77 and isinstance(bad, RuntimeError)


def test_an_embedding_is_read_once_and_the_longest_name_matches_first(tmp_path, pipelines):
    tokenizer = pipelines["sd15"].tokenizer
    save_file({"emb_params": torch.randn(1, 32)}, tmp_path / "easy.safetensors")
    save_file({"emb_params": torch.randn(3, 32)}, tmp_path / "easyneg.safetensors")
    library = EmbeddingLibrary(str(tmp_path))
    find = library.finder(tokenizer)
    ids = tokenizer("a easyneg b", add_special_tokens=False).input_ids
    assert find(ids, ids.index(tokenizer("easyneg", add_special_tokens=False).input_ids[0])) == ("easyneg", 7, 3)
    assert find(ids, 0) is None
    library.get("easyneg")
    assert library.get("easyneg").count() == 3 and library.loads == 1
