"""[render] offload, quantize and step_cache on a loaded model: applied, refused where they cannot work, recorded."""

import sys

import numpy as np
import pytest
import torch

from sdbatch.errors import ModelLoadError
from sdbatch.render.models import options
from sdbatch.settings import FastPath
from tests.support import family_checks as checks

pytestmark = pytest.mark.usefixtures("tiny_cache")
CPU = torch.device("cpu")


def _flux_rows(steps: int = 8) -> list[dict]:
    return [checks.row(n, "tiny:flux", steps=steps, seed=3 + n, prompt=f"a small test picture {n}")
            for n in range(2)]


def _full_steps(renderer) -> list[int]:
    """Calls of the last transformer block's output layer: a step the cache skips does not reach it."""
    calls: list[int] = []
    block = renderer.model("tiny:flux").pipeline.transformer.single_transformer_blocks[-1].proj_out
    block.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("threshold, skips", [(0.01, False), (0.9, True)])
def test_first_block_cache_skips_steps_changes_the_image_as_much_and_is_recorded(tmp_path, threshold, skips):
    plain = checks.new_renderer(tmp_path / "plain")
    cached = checks.new_renderer(tmp_path / "cached", fast=FastPath(step_cache=f"first_block:{threshold}"))
    try:
        base = checks.render(plain, *_flux_rows())
        steps = _full_steps(cached)
        out = checks.render(cached, *_flux_rows())
        for name in ("r0", "r1"):
            moved = np.abs(checks.pixels(out[name]) - checks.pixels(base[name])).max()
            assert bool(moved > checks.NOISE) == skips, moved
        assert (len(steps) < 8) == skips, steps  # one call of 8 steps for both rows
        assert cached.provenance(ok=True)["step_cache"] == f"first_block:{threshold}"
        assert plain.provenance(ok=True)["step_cache"] == "none"
    finally:
        plain.close()
        cached.close()


def test_a_denoiser_without_diffusers_step_caching_is_refused_by_name():
    from sdbatch.render.tiny.sd15 import build_sd15_pipeline

    unet = build_sd15_pipeline(0).unet
    with pytest.raises(ModelLoadError, match=r"step_cache = 'taylorseer:4'.*UNet2DConditionModel.*'none'"):
        options.enable_step_cache(unet, FastPath(step_cache="taylorseer:4"))


def test_taylorseer_changes_the_image(tmp_path):
    plain = checks.new_renderer(tmp_path / "plain")
    cached = checks.new_renderer(tmp_path / "cached", fast=FastPath(step_cache="taylorseer:3"))
    try:
        base, out = (checks.render(r, *_flux_rows(steps=12))["r0"] for r in (plain, cached))
        # The same rows in the same call shape: without the cache the pixels would be equal.
        assert np.abs(checks.pixels(out) - checks.pixels(base)).max() > 0
    finally:
        plain.close()
        cached.close()


def test_offload_needs_a_gpu():
    with pytest.raises(ModelLoadError, match="offload = 'model'.*renders on cpu; use offload = 'none'"):
        options.place(torch.nn.Linear(2, 2), CPU, FastPath(offload="model"))
    module = torch.nn.Linear(2, 2)
    assert options.place(module, CPU, FastPath()) is module


def test_fp8_needs_a_gpu_that_has_it_and_quantizing_needs_torchao(monkeypatch):
    layer = torch.nn.Linear(4, 4)
    with pytest.raises(ModelLoadError, match=r"'fp8' needs a GPU with fp8.*renders on cpu; use quantize = 'int8'"):
        options.quantize(layer, CPU, FastPath(quantize="fp8"))
    monkeypatch.setitem(sys.modules, "torchao", None)  # as where it is not installed
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(ModelLoadError, match="needs torchao.*pip install torchao"):
        options.quantize(layer, CPU, FastPath(quantize="int8"))
    before = layer.weight.clone()
    options.quantize(layer, CPU, FastPath())
    assert torch.equal(layer.weight, before)
