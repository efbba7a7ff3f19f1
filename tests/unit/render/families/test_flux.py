"""The FLUX.1 family on the tiny FLUX model: diffusers' own pipeline reproduced, distilled guidance and true CFG,
flow-match schedulers, LoRAs (diffusers and kohya files), ControlNets, image rows, other families' assets refused."""

import numpy as np
import pyarrow as pa
import pytest

from sdbatch.a1111.samplers import BY_NAME
from sdbatch.errors import ManifestError, VariantError
from sdbatch.manifest.normalize import normalize
from sdbatch.render.families import FAMILIES
from sdbatch.render.models.loading import make_scheduler
from sdbatch.render.models.sources import tiny_model_path
from sdbatch.settings import RowDefaults
from tests.support import family_checks as checks

pytestmark = pytest.mark.usefixtures("tiny_cache")
MODEL = "tiny:flux"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from tests.support.tiny_variants import write_tiny_flux_fill

    root = tmp_path_factory.mktemp("flux-assets")
    return {**checks.write_assets(root, "flux", "sd15"), "fill": str(write_tiny_flux_fill(root / "fill"))}


@pytest.fixture(scope="module")
def renderer(tmp_path_factory):
    yield from checks.module_renderer(tmp_path_factory, "flux")


def test_a_plain_prompt_renders_as_diffusers_flux_pipeline(renderer):
    from diffusers import FluxPipeline

    checks.check_renders_as_diffusers(renderer, FluxPipeline, tiny_model_path("flux"), MODEL)
    model = renderer.model(MODEL)
    assert type(model.pipeline).__name__ == "FluxPipeline" and model.family is FAMILIES["flux"]


def test_guidance_is_distilled_and_true_cfg_guides_with_the_negative_prompt(renderer):
    from diffusers import FluxPipeline

    def flux(i, **extra):
        return checks.row(i, MODEL, negative_prompt="blurry", max_sequence_length=None, **extra)

    out = checks.render(renderer, flux(0), flux(1, guidance_scale=1.0), flux(2, true_cfg_scale=3.0))
    base = checks.pixels(out["r0"])
    assert np.abs(checks.pixels(out["r1"]) - base).max() > checks.CHANGED  # the guidance embedding is an input
    assert np.abs(checks.pixels(out["r2"]) - base).max() > checks.CHANGED
    assert out["r0"].recorded == {"family": "flux", "max_sequence_length": 512, "true_cfg_scale": 1.0}
    assert out["r2"].recorded["true_cfg_scale"] == 3.0
    theirs = checks.diffusers_image(FluxPipeline, tiny_model_path("flux"), flux(2), true_cfg_scale=3.0)
    assert np.abs(checks.pixels(out["r2"]) / 255 - theirs).max() <= 1 / 255


def test_flow_match_schedulers_under_their_a1111_names(renderer):
    out = checks.render(renderer, *(checks.row(n, MODEL, scheduler=name) for n, name in
                                    enumerate([None, "euler", "euler_simple", "euler_karras"])))
    base = checks.pixels(out["r0"])
    assert {r.scheduler_class for r in out.values()} == {"FlowMatchEulerDiscreteScheduler"}
    assert np.abs(checks.pixels(out["r1"]) - base).max() <= checks.NOISE  # Euler is the model's own
    assert np.abs(checks.pixels(out["r2"]) - base).max() <= checks.NOISE  # Forge's Simple: the same schedule
    assert np.abs(checks.pixels(out["r3"]) - base).max() > checks.NOISE
    model = renderer.model(MODEL)
    karras, own = make_scheduler(model, "euler_karras"), make_scheduler(model, None)
    for scheduler in (karras, own):
        scheduler.set_timesteps(3, mu=0.5)  # mu: the dynamic shift FLUX computes from the image size
    assert karras.config.use_karras_sigmas and not np.allclose(karras.sigmas.numpy(), own.sigmas.numpy())
    with pytest.raises(VariantError, match="does not work with FLUX.1 models"):
        FAMILIES["flux"].scheduler(renderer.model(MODEL).base_scheduler, BY_NAME["dpmpp_2m"])


def test_loras_act_by_weight_and_another_familys_fails_its_row(renderer, assets):
    checks.check_loras(renderer, MODEL, assets["lora"], assets["other_lora"], "FLUX.1-dev")


def test_a_kohya_lora_renders_as_its_diffusers_original(renderer, tmp_path):
    from tests.support.tiny_variants import convert_flux_lora_to_kohya, write_tiny_lora

    # kohya's FLUX files fuse single-block projections at FLUX.1's real widths, which the tiny model lacks: the
    # double blocks and CLIP carry it.
    original = write_tiny_lora(tmp_path / "lora.safetensors", seed=3, family="flux", single_blocks=False)
    kohya = convert_flux_lora_to_kohya(original, tmp_path / "kohya.safetensors")

    def with_lora(i, path):
        return checks.row(i, MODEL, loras=[{"path": str(path), "weight": 0.8}])

    out = checks.render(renderer, checks.row(0, MODEL), with_lora(1, original), with_lora(2, kohya))
    assert np.abs(checks.pixels(out["r1"]) - checks.pixels(out["r0"])).max() > checks.CHANGED
    assert np.abs(checks.pixels(out["r2"]) - checks.pixels(out["r1"])).max() <= checks.NOISE


def test_controlnets_single_and_multi_and_another_familys_fails_its_row(renderer, assets):
    checks.check_controlnets(renderer, MODEL, assets["cn"], assets["other_cn"], assets, "FLUX.1-dev")
    assert type(renderer._variants.controlnets._pipeline).__name__ == "FluxControlNetPipeline"


def test_img2img_inpainting_and_hires_rows(renderer, assets):
    checks.check_image_rows(renderer, MODEL, assets)


def test_a_fill_model_inpaints_keeping_every_pixel_outside_the_mask_and_refuses_other_rows(renderer, assets):
    fill = assets["fill"]
    out = checks.render(renderer, checks.row(0, fill, pipeline="inpaint", strength=1.0, init_image=assets["init"],
                                             mask_image=assets["mask"]))["r0"]
    init = checks.pixels_of_file(assets["init"])
    outside = np.ones((checks.SIZE, checks.SIZE), dtype=bool)
    outside[16:48, 16:48] = False
    assert np.abs(checks.pixels(out) - init)[outside].max() <= checks.NOISE
    assert np.abs(checks.pixels(out) - init)[~outside].mean() > 20
    assert type(renderer.model(fill).pipeline).__name__ == "FluxFillPipeline"
    with pytest.raises(ManifestError, match="is an inpainting-only FLUX.1 model \\(FluxFillPipeline\\)"):
        normalize(pa.table({"prompt": ["a fox"], "model": [fill]}), RowDefaults())
