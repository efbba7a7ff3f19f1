"""The Z-Image family on the tiny Z-Image model: diffusers' own pipeline reproduced, guidance from 0, prompts of any
length in one call, flow-match schedulers, LoRAs (diffusers and kohya files), one ControlNet (txt2img), image rows,
other families' assets refused."""

from types import SimpleNamespace

import numpy as np
import pytest

from sdbatch.a1111.samplers import BY_NAME
from sdbatch.errors import VariantError
from sdbatch.render.batching import Batch
from sdbatch.render.families import FAMILIES
from sdbatch.render.models.sources import tiny_model_path
from sdbatch.render.text.native import PipelinePrompts
from tests.support import family_checks as checks

pytestmark = pytest.mark.usefixtures("tiny_cache")
MODEL = "tiny:zimage"
LONG = "a small test picture of a red fox asleep in the snow under a pine tree, soft evening light"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return checks.write_assets(tmp_path_factory.mktemp("zimage-assets"), "zimage", "flux")


@pytest.fixture(scope="module")
def renderer(tmp_path_factory):
    yield from checks.module_renderer(tmp_path_factory, "zimage")


def test_a_plain_prompt_renders_as_diffusers_zimage_pipeline(renderer):
    from diffusers import ZImagePipeline

    checks.check_renders_as_diffusers(renderer, ZImagePipeline, tiny_model_path("zimage"), MODEL)
    model = renderer.model(MODEL)
    assert type(model.pipeline).__name__ == "ZImagePipeline" and model.family is FAMILIES["zimage"]
    assert model.native_size == (64, 64)  # the VAE's sample size, not the pipeline's constant 1024
    unsized = SimpleNamespace(vae=SimpleNamespace(config=SimpleNamespace(sample_size=32)))  # AutoencoderKL's default
    assert model.family.native_size(unsized) == (1024, 1024)
    # Z-Image-Turbo's way, guidance 0: the negative prompt is never read, and it matches diffusers there too.
    unguided = checks.row(0, MODEL, guidance_scale=0.0, negative_prompt="blurry")
    theirs = checks.diffusers_image(ZImagePipeline, tiny_model_path("zimage"), unguided, max_sequence_length=32)
    out = checks.render(renderer, unguided, checks.row(1, MODEL, guidance_scale=0.0),
                        checks.row(2, MODEL, guidance_scale=0.5, negative_prompt="blurry"))
    assert np.abs(checks.pixels(out["r0"]) / 255 - theirs).max() <= 1 / 255
    assert np.abs(checks.pixels(out["r1"]) - checks.pixels(out["r0"])).max() <= checks.NOISE
    assert np.abs(checks.pixels(out["r2"]) - checks.pixels(out["r0"])).max() > checks.CHANGED  # guided above 0
    assert out["r0"].recorded == {"family": "zimage", "max_sequence_length": 32}


def test_prompts_of_different_lengths_share_one_call_and_render_as_alone(renderer):
    # 128 tokens: the long prompt is not cut (the checks' rows read 32).
    rows = [checks.row(0, MODEL, negative_prompt="blurry", max_sequence_length=128),
            checks.row(1, MODEL, prompt=LONG, seed=6, max_sequence_length=128)]
    model = renderer.model(MODEL)
    states = PipelinePrompts(model.pipeline, model.family).encode(rows)
    # Each prompt's own states, no padding: the pipeline takes a list of them.
    assert states[0].embeds.shape[1] < states[1].embeds.shape[1] < 128 and all(s.ragged for s in states)
    assert len(Batch(rows, None, [], states).by_prompt_length()) == 1
    arguments = model.family.text_arguments(states)
    assert [x.shape for x in arguments["prompt_embeds"]] == [s.embeds.shape[1:] for s in states]
    together = checks.render(renderer, *rows)
    for n, row in enumerate(rows):
        alone = checks.render(renderer, row)[f"r{n}"]
        assert np.abs(checks.pixels(alone) - checks.pixels(together[f"r{n}"])).max() <= checks.NOISE


def test_flow_match_schedulers_under_their_a1111_names(renderer):
    out = checks.render(renderer, *(checks.row(n, MODEL, scheduler=name) for n, name in
                                    enumerate([None, "euler", "euler_karras"])))
    base = checks.pixels(out["r0"])
    assert {r.scheduler_class for r in out.values()} == {"FlowMatchEulerDiscreteScheduler"}
    assert np.abs(checks.pixels(out["r1"]) - base).max() <= checks.NOISE  # Euler is the model's own
    assert np.abs(checks.pixels(out["r2"]) - base).max() > checks.NOISE
    with pytest.raises(VariantError, match="does not work with Z-Image models"):
        FAMILIES["zimage"].scheduler(renderer.model(MODEL).base_scheduler, BY_NAME["dpmpp_2m"])


def test_loras_act_by_weight_and_another_familys_fails_its_row(renderer, assets):
    checks.check_loras(renderer, MODEL, assets["lora"], assets["other_lora"], "Z-Image")


def test_a_kohya_lora_renders_as_its_diffusers_original(renderer, tmp_path):
    from tests.support.tiny_variants import convert_zimage_lora_to_kohya, write_tiny_lora

    original = write_tiny_lora(tmp_path / "lora.safetensors", seed=3, family="zimage")
    kohya = convert_zimage_lora_to_kohya(original, tmp_path / "kohya.safetensors")

    def with_lora(i, path):
        return checks.row(i, MODEL, loras=[{"path": str(path), "weight": 0.8}])

    out = checks.render(renderer, checks.row(0, MODEL), with_lora(1, original), with_lora(2, kohya))
    assert np.abs(checks.pixels(out["r1"]) - checks.pixels(out["r0"])).max() > checks.CHANGED
    assert np.abs(checks.pixels(out["r2"]) - checks.pixels(out["r1"])).max() <= checks.NOISE


def test_one_controlnet_acts_two_and_another_familys_fail_their_rows(renderer, assets):
    def controlled(i, nets, image="edges", **extra):
        return checks.row(i, MODEL, controlnets=[{"model": m, "image": assets[image], "scale": 1.0} for m in nets],
                          **extra)

    out = checks.render(renderer, checks.row(0, MODEL), controlled(1, [assets["cn"]]),
                        controlled(2, [assets["cn"]], "white"), controlled(3, [assets["cn"], assets["cn"]]),
                        controlled(4, [assets["other_cn"]]),
                        controlled(5, [assets["cn"]], pipeline="img2img", strength=0.5, init_image=assets["init"]))
    base = checks.pixels(out["r0"])
    assert np.abs(checks.pixels(out["r1"]) - base).max() > checks.CHANGED
    assert np.abs(checks.pixels(out["r2"]) - checks.pixels(out["r1"])).max() > checks.CHANGED  # its image matters
    assert "ZImageControlNetPipeline takes one ControlNet" in out["r3"].error
    assert "but this row's model is Z-Image" in out["r4"].error, out["r4"].error
    assert "diffusers has no img2img pipeline with ControlNets for Z-Image models" in out["r5"].error
    assert type(renderer._variants.controlnets._pipeline).__name__ == "ZImageControlNetPipeline"
    # And without the ControlNet the model renders as before: the shared modules were not changed.
    assert np.abs(checks.pixels(checks.render(renderer, checks.row(0, MODEL))["r0"]) - base).max() <= checks.NOISE


def test_img2img_renders_as_diffusers_and_inpainting_and_hires_rows_work(renderer, assets):
    from diffusers import ZImageImg2ImgPipeline
    from PIL import Image

    # Z-Image's schedule ends at sigma 1/steps, shifted (a quarter at strength 0.1): a random transformer moves even a
    # low-strength image far (its velocity is not a trained one's), so img2img is held to diffusers' own pixels, not
    # to check_image_rows' bound on what a low strength keeps.
    def image_row(i, **extra):
        return checks.row(i, MODEL, init_image=assets["init"], steps=6, **extra)

    low, full = image_row(0, pipeline="img2img", strength=0.5), image_row(1, pipeline="img2img", strength=1.0)
    out = checks.render(renderer, low, full, image_row(2, pipeline="inpaint", strength=0.9, mask_image=assets["mask"]))
    theirs = checks.diffusers_image(ZImageImg2ImgPipeline, tiny_model_path("zimage"), low, max_sequence_length=32,
                                    image=Image.open(assets["init"]).convert("RGB"), strength=0.5)
    assert np.abs(checks.pixels(out["r0"]) / 255 - theirs).max() <= 1 / 255
    assert np.abs(checks.pixels(out["r0"]) - checks.pixels(out["r1"])).max() > checks.CHANGED  # strength is read
    outside = np.ones((checks.SIZE, checks.SIZE), dtype=bool)
    outside[16:48, 16:48] = False
    inpainted = np.abs(checks.pixels(out["r2"]) - checks.pixels_of_file(assets["init"]))
    assert inpainted[outside].max() <= checks.NOISE and inpainted[~outside].mean() > 20
    inpaint = renderer._variants.kinds.of(renderer.model(MODEL).pipeline, "inpaint")
    assert type(inpaint).__name__ == "ZImageInpaintPipeline"
    for upscaler in ("latent", "image"):
        hires = checks.render(renderer, checks.row(9, MODEL, hires_scale=1.5, hires_steps=None, hires_strength=0.6,
                                                   hires_upscaler=upscaler))["r9"]
        assert hires.error is None and hires.image.size == (96, 96), (upscaler, hires.error)


def test_a_latent_hires_pass_hands_its_latents_on_as_latents(renderer):
    import warnings

    # diffusers' Z-Image img2img processor counts 4 latent channels: 16 would be taken for pixels (a FutureWarning
    # about their range each call, and on the real model a resize to its 16-pixel grid, a shape error off it).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hires = checks.render(renderer, checks.row(9, MODEL, hires_scale=1.5, hires_steps=2, hires_strength=0.5,
                                                   hires_upscaler="latent"))["r9"]
    assert hires.error is None and hires.image.size == (96, 96), hires.error
    assert not [w for w in caught if "value range" in str(w.message)]
