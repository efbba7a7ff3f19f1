"""Prompts as A1111 users write them, rendered on the tiny models: weights, long prompts, clip skip, embeddings."""

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdbatch.render.renderer import Renderer
from sdbatch.settings import RendererSettings
from sdbatch.store.local import LocalStore

pytestmark = pytest.mark.usefixtures("tiny_cache")
CHANGED = 8  # out of 255: a real change of conditioning moves pixels by far more than this
NOISE = 1  # CPU float noise between a row alone and in a batch
LONG = "a quiet village street at dusk with lanterns, " * 4  # ~180 byte tokens: three chunks on the tiny tokenizer


def _row(i: int, prompt: str, model: str = "tiny:sd15", **extra) -> dict:
    return {"id": f"r{i}", "prompt": prompt, "negative_prompt": "blurry", "seed": 7, "model": model,
            "width": 64, "height": 64, "steps": 4, "scheduler": "euler", "guidance_scale": 6.0,
            "prompt_syntax": "a1111", "clip_skip": 1, **extra}


def _pixels(rendered) -> np.ndarray:
    assert rendered.ok, rendered.error
    return np.asarray(rendered.image.convert("RGB"), dtype=np.int16)


def _differ(a, b) -> int:
    return int(np.abs(_pixels(a) - _pixels(b)).max())


@pytest.fixture(scope="module")
def embedding_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("embeddings")
    g = torch.Generator().manual_seed(3)
    save_file({"emb_params": torch.randn(2, 32, generator=g)}, root / "fuzzyfox.safetensors")  # A1111, SD1.x
    save_file({"clip_l": torch.randn(1, 32, generator=g), "clip_g": torch.randn(1, 48, generator=g)},
              root / "xlstyle.safetensors")
    return root


@pytest.fixture(scope="module")
def renderers(tmp_path_factory, embedding_dir):
    store = LocalStore(str(tmp_path_factory.mktemp("prompts-out")))
    plain = Renderer(store, RendererSettings(batch_size=4, io_threads=1, cpu_threads=2))
    with_embeddings = Renderer(store, RendererSettings(batch_size=4, io_threads=1, cpu_threads=2,
                                                       embedding_dir=str(embedding_dir)))
    yield plain, with_embeddings
    plain.close()
    with_embeddings.close()


def _render(renderer, *rows) -> list:
    return sorted(renderer.render_rows(list(rows)), key=lambda r: r.row["id"])


def test_weights_change_the_image_and_a_weight_of_one_changes_nothing(renderers):
    renderer, _ = renderers
    fox, heavy, neutral, literal = _render(renderer, _row(0, "a fox in snow"), _row(1, "a (fox:1.5) in snow"),
                                           _row(2, "a (fox:1.0) in snow"),
                                           _row(3, "a (fox:1.5) in snow", prompt_syntax="plain"))
    assert _differ(fox, heavy) > CHANGED
    assert _differ(fox, neutral) <= NOISE
    assert _differ(heavy, literal) > CHANGED  # plain reads the brackets as text


def test_tokens_past_77_count(renderers):
    renderer, _ = renderers
    ending_a, ending_b = _render(renderer, _row(0, LONG + "and a red door"), _row(1, LONG + "and a blue cat"))
    assert _differ(ending_a, ending_b) > NOISE  # cut at 77 tokens, the two would be the same image


def test_clip_skip_2_differs_from_1_and_one_the_model_lacks_fails_its_row(renderers):
    renderer, _ = renderers
    last, penultimate, too_deep = _render(renderer, _row(0, "a fox"), _row(1, "a fox", clip_skip=2),
                                          _row(2, "a fox", clip_skip=5))
    assert _differ(last, penultimate) > CHANGED
    assert not too_deep.ok and "clip_skip 5" in too_deep.error and "2" in too_deep.error


def test_rows_of_other_lengths_and_weights_in_one_batch_render_as_they_do_alone(renderers):
    renderer, _ = renderers
    rows = [_row(0, "a fox"), _row(1, LONG), _row(2, "a ((fox)) BREAK in [snow]"), _row(3, "a cat"),
            _row(4, "a fox", negative_prompt=LONG)]
    together = _render(renderer, *rows)
    # Micro-batches of 4 ([0-3], [4]); inside one, a call per length: 0 and 3 have one chunk, 2 two (BREAK),
    # 1 three, and 4 three (its negative prompt's).
    assert [r.batch_size for r in together] == [2, 1, 1, 2, 1]
    for row, batched in zip(rows, together):
        assert _differ(next(iter(renderer.render_rows([row]))), batched) <= NOISE


def test_an_embedding_changes_the_image_and_prompts_without_its_word_are_untouched(renderers, embedding_dir):
    plain, with_embeddings = renderers
    base, = _render(plain, _row(0, "a photo of fuzzyfox, detailed"))
    used, = _render(with_embeddings, _row(0, "a photo of fuzzyfox, detailed"))
    assert _differ(base, used) > CHANGED
    digest = hashlib.sha256((embedding_dir / "fuzzyfox.safetensors").read_bytes()).hexdigest()
    assert used.embeddings_used == [{"name": "fuzzyfox", "sha256": digest}]
    unrelated_base, = _render(plain, _row(1, "a photo of a fox, detailed"))
    unrelated, = _render(with_embeddings, _row(1, "a photo of a fox, detailed"))
    assert _differ(unrelated_base, unrelated) == 0 and unrelated.embeddings_used == []
    negative, = _render(with_embeddings, _row(2, "a photo of a fox, detailed", negative_prompt="fuzzyfox"))
    assert _differ(unrelated, negative) > CHANGED and negative.embeddings_used[0]["name"] == "fuzzyfox"


def test_an_embedding_of_another_family_fails_only_its_row(renderers):
    _, renderer = renderers
    wrong, fine = _render(renderer, _row(0, "xlstyle castle"), _row(1, "fuzzyfox castle"))
    assert not wrong.ok and "embedding xlstyle is an SDXL embedding" in wrong.error
    assert fine.ok


def test_sdxl_weights_long_prompts_and_its_own_embeddings(renderers):
    _, renderer = renderers
    base, heavy, long_a, long_b, styled, wrong = _render(
        renderer, _row(0, "a fox", "tiny:sdxl"), _row(1, "a (fox:3)", "tiny:sdxl"),
        _row(2, LONG + "red door", "tiny:sdxl"), _row(3, LONG + "blue cat", "tiny:sdxl"),
        _row(4, "a fox xlstyle", "tiny:sdxl"), _row(5, "a fox fuzzyfox", "tiny:sdxl"))
    # The tiny SDXL UNet follows its text less than the SD1.5 one: any change beyond noise shows the effect.
    assert _differ(base, heavy) > NOISE and _differ(long_a, long_b) > NOISE
    assert _differ(base, styled) > NOISE and styled.embeddings_used[0]["name"] == "xlstyle"
    assert not wrong.ok and "SDXL model needs one with clip_l and clip_g" in wrong.error


def test_rows_read_from_a1111_images_render_only_with_the_embedding_files_they_were_made_with(renderers,
                                                                                              embedding_dir):
    _, renderer = renderers
    digest = hashlib.sha256((embedding_dir / "fuzzyfox.safetensors").read_bytes()).hexdigest()
    same, other, missing = _render(renderer, _row(0, "fuzzyfox", ti_hashes=f"fuzzyfox: {digest[:12]}"),
                                   _row(1, "fuzzyfox", ti_hashes="fuzzyfox: c74b4e810b03"),
                                   _row(2, "EasyNegative", ti_hashes="EasyNegative: c74b4e810b03"))
    assert same.ok
    assert not other.ok and f"has hash {digest[:12]}, but the row was made with c74b4e810b03" in other.error
    assert not missing.ok and "embedding EasyNegative (column ti_hashes) is not in the embedding folder" in \
        missing.error
