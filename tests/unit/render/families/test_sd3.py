"""The SD3/3.5 family on the tiny SD3 model: diffusers' own pipeline reproduced, flow-match schedulers, LoRAs,
ControlNets (txt2img), image rows, other families' assets and kinds without a pipeline refused."""

import numpy as np
import pytest

from sdbatch.render.families import FAMILIES
from sdbatch.render.models.sources import tiny_model_path
from tests.support import family_checks as checks

pytestmark = pytest.mark.usefixtures("tiny_cache")
MODEL = "tiny:sd3"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return checks.write_assets(tmp_path_factory.mktemp("sd3-assets"), "sd3", "flux")


@pytest.fixture(scope="module")
def renderer(tmp_path_factory):
    yield from checks.module_renderer(tmp_path_factory, "sd3")


def test_a_plain_prompt_renders_as_diffusers_sd3_pipeline(renderer):
    from diffusers import StableDiffusion3Pipeline

    checks.check_renders_as_diffusers(renderer, StableDiffusion3Pipeline, tiny_model_path("sd3"), MODEL)
    model = renderer.model(MODEL)
    assert model.family is FAMILIES["sd3"]
    out = checks.render(renderer, checks.row(0, MODEL), checks.row(1, MODEL, negative_prompt="blurry"),
                        checks.row(2, MODEL, guidance_scale=1.0, negative_prompt="blurry", max_sequence_length=None))
    assert np.abs(checks.pixels(out["r1"]) - checks.pixels(out["r0"])).max() > checks.CHANGED  # CFG reads it
    assert out["r2"].recorded == {"family": "sd3", "max_sequence_length": 256}


def test_loras_act_by_weight_and_another_familys_fails_its_row(renderer, assets):
    checks.check_loras(renderer, MODEL, assets["lora"], assets["other_lora"], "SD3/3.5")


def test_controlnets_single_and_multi_and_another_familys_fails_its_row(renderer, assets):
    checks.check_controlnets(renderer, MODEL, assets["cn"], assets["other_cn"], assets, "SD3/3.5")
    assert type(renderer._variants.controlnets._pipeline).__name__ == "StableDiffusion3ControlNetPipeline"
    img2img = checks.row(5, MODEL, pipeline="img2img", strength=0.5, init_image=assets["init"],
                         controlnets=[{"model": assets["cn"], "image": assets["edges"], "scale": 1.0}])
    failed = checks.render(renderer, img2img)["r5"]
    assert "diffusers has no img2img pipeline with ControlNets for SD3/3.5 models" in failed.error


def test_img2img_inpainting_and_hires_rows(renderer, assets):
    checks.check_image_rows(renderer, MODEL, assets)
