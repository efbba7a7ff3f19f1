"""Non-finite output: found per image, and a row that overflows fails with why while its batch mates render."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sdbatch.output.layouts.files import image_key
from sdbatch.render import calls
from sdbatch.render.finite import NonFiniteOutput, finite_rows, overflowed
from sdbatch.render.renderer import Renderer
from sdbatch.settings import RendererSettings
from sdbatch.store.local import LocalStore
from sdbatch.tasks import ShardTask

# A weight past float32's largest (3.4e38): the row's text states, then its latents and image, overflow.
OVERFLOWING = "a fox, (cat:1" + "0" * 39 + ")"


def test_finite_rows_flags_each_image_with_a_nan_or_an_inf():
    images = torch.rand(4, 3, 8, 8)
    images[1, 2, 5, 5] = float("nan")
    images[3, 0, 0, 0] = float("-inf")
    assert finite_rows(images) == [True, False, True, False]
    # Bright float16 images whose pixel sum alone would overflow float16 are still finite.
    assert finite_rows(torch.ones(2, 3, 256, 256, dtype=torch.float16)) == [True, True]


def _batch(rows: int) -> SimpleNamespace:
    family = SimpleNamespace(denoiser=lambda pipe: SimpleNamespace(dtype=torch.float16))
    return SimpleNamespace(rows=[{"id": f"r{n}", "steps": 7, "strength": None} for n in range(rows)],
                           variant=SimpleNamespace(family=family, pipeline=None))


def test_images_of_gives_the_nan_row_its_error_and_the_others_their_own_images():
    images = torch.stack([torch.full((3, 4, 4), n / 4) for n in range(4)])  # row n: every pixel n/4
    images[2, 1, 3, 0] = float("nan")
    out = calls.images_of(_batch(4), images, "the image", calls.steps_run)
    assert isinstance(out[2], NonFiniteOutput) and "after 7 steps" in str(out[2])
    assert [np.asarray(out[n]).max() for n in (0, 1, 3)] == [0, 64, 191]  # each row keeps its own pixels


def test_the_error_says_what_overflowed_and_suggests_bfloat16_only_under_float16():
    message = str(overflowed("the first pass's latents", 12, torch.float16))
    assert message.startswith("the first pass's latents came out non-finite (NaN/inf) after 12 steps")
    assert "prompt weight" in message and "bfloat16" in message
    assert "bfloat16" not in str(overflowed("the image", 12, torch.float32))


def test_steps_run_counts_an_image_rows_strength():
    assert calls.steps_run({"steps": 20, "strength": None}) == 20
    assert calls.steps_run({"steps": 20, "strength": 0.5}) == 10
    assert calls.steps_run({"steps": 4, "strength": 0.1}) == 1


@pytest.fixture(scope="module")
def renderer(tiny_cache, tmp_path_factory):
    r = Renderer(LocalStore(str(tmp_path_factory.mktemp("out"))),
                 RendererSettings(batch_size=4, io_threads=1, cpu_threads=2))
    yield r
    r.close()


def _row(i: int, **extra) -> dict:
    row = {"id": f"r{i}", "prompt": f"a fox {i}", "negative_prompt": "", "seed": 7 + i, "model": "tiny:sd15",
           "width": 64, "height": 64, "steps": 4, "scheduler": "euler", "guidance_scale": 6.0,
           "pipeline": "txt2img", "strength": None, "hires_scale": None}
    return {**row, **extra}


def _hires(i: int, upscaler: str, **extra) -> dict:
    return _row(i, hires_scale=1.5, hires_steps=None, hires_strength=0.6, hires_upscaler=upscaler, **extra)


def _render(renderer, *rows) -> dict:
    return {r.row["id"]: r for r in renderer.render_rows(list(rows))}


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_an_overflowing_row_fails_with_why_and_its_batch_mates_keep_their_images(renderer):
    task = ShardTask("nan", "a1", (_row(0), _row(1, prompt=OVERFLOWING), _row(2)), "png", 95)
    result = renderer.render_shard(task)
    assert (result.rows_ok, result.rows_failed) == (2, 1)
    assert result.failures["r1"].startswith("NonFiniteOutput: the image came out non-finite (NaN/inf) after 4 steps")
    assert not renderer.store.exists(image_key("nan", "r1", "png"))
    # The others shared the call with it and came out as they do without it: real pictures, not black.
    together = _render(renderer, _row(0), _row(1, prompt=OVERFLOWING), _row(2))
    apart = _render(renderer, _row(0), _row(2))
    for name in ("r0", "r2"):
        assert together[name].batch_size == 3 and _pixels(together[name].image).max() > 100
        assert np.abs(_pixels(together[name].image) - _pixels(apart[name].image)).max() <= 1


@pytest.mark.parametrize("upscaler, what", [("latent", "the first pass's latents"),
                                            ("image", "the first pass's image")])
def test_a_hires_row_that_overflows_fails_at_its_first_pass(renderer, upscaler, what):
    out = _render(renderer, _hires(0, upscaler, prompt=OVERFLOWING), _hires(1, upscaler))
    assert not out["r0"].ok and out["r0"].error.startswith(f"NonFiniteOutput: {what} came out non-finite")
    assert out["r1"].ok and out["r1"].image.size == (96, 96) and _pixels(out["r1"].image).max() > 100
