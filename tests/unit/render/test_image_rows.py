"""Image-conditioned rows on the tiny models: img2img, inpainting and a hires pass, batched like the rest."""

import gc

import numpy as np
import pytest
import torch
from PIL import Image

from sdbatch.render import calls
from sdbatch.render.renderer import Renderer
from sdbatch.settings import RendererSettings
from sdbatch.store.local import LocalStore

pytestmark = pytest.mark.usefixtures("tiny_cache")
NOISE = 1  # CPU float noise between a row alone and in a batch


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "init.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255  # white: repainted
    Image.fromarray(mask).save(root / "mask.png")
    (root / "broken.png").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def renderer(tmp_path_factory):
    r = Renderer(LocalStore(str(tmp_path_factory.mktemp("out"))),
                 RendererSettings(batch_size=4, io_threads=1, cpu_threads=2))
    yield r
    r.close()


def _row(i: int, model: str = "tiny:sd15", **extra) -> dict:
    row = {"id": f"r{i}", "prompt": f"a fox {i}", "negative_prompt": "", "seed": 7 + i, "model": model, "width": 64,
           "height": 64, "steps": 4, "scheduler": "euler", "guidance_scale": 6.0, "pipeline": "txt2img",
           "strength": None, "hires_scale": None}
    return {**row, **extra}


def _img2img(i, images, strength, **extra):
    return _row(i, **{"pipeline": "img2img", "init_image": str(images / "init.png"), "strength": strength, **extra})


def _inpaint(i, images, **extra):
    return _row(i, pipeline="inpaint", init_image=str(images / "init.png"), mask_image=str(images / "mask.png"),
                strength=0.9, **extra)


def _hires(i, upscaler="latent", **extra):
    return _row(i, hires_scale=1.5, hires_steps=None, hires_strength=0.6, hires_upscaler=upscaler, **extra)


def _render(renderer, *rows) -> dict:
    return {r.row["id"]: r for r in renderer.render_rows(list(rows))}


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _vae_round_trip(renderer, path, model="tiny:sd15") -> np.ndarray:
    """The init image as the model's VAE gives it back: all that any strength can keep of it (the tiny VAE has
    random weights, so this is far from the file's pixels)."""
    pipe = renderer.model(model).pipeline
    with torch.inference_mode():
        latents = pipe.vae.encode(pipe.image_processor.preprocess(Image.open(path).convert("RGB"))).latent_dist.mode()
        decoded = pipe.image_processor.postprocess(pipe.vae.decode(latents).sample, output_type="pil")[0]
    return _pixels(decoded)


def test_img2img_strength_keeps_or_repaints_the_init_image_and_a_row_renders_as_alone(renderer, images):
    rows = [_img2img(0, images, 0.05), _img2img(1, images, 0.9), _img2img(2, images, 0.9), _img2img(3, images, 0.9)]
    out = _render(renderer, *rows)
    kept = _vae_round_trip(renderer, images / "init.png")
    assert np.abs(_pixels(out["r0"].image) - kept).mean() < 8
    assert np.abs(_pixels(out["r1"].image) - kept).mean() > 20
    assert out["r1"].batch_size == 3  # the 0.9 rows share a call; strength is part of the variant
    alone = _render(renderer, rows[2])["r2"]
    assert np.abs(_pixels(alone.image) - _pixels(out["r2"].image)).max() <= NOISE
    assert out["r1"].sources["init_image_sha256"] == alone.sources["init_image_sha256"] is not None


def test_inpainting_changes_only_the_masked_part(renderer, images):
    out = _render(renderer, _inpaint(0, images))["r0"]
    init, result = _pixels(Image.open(images / "init.png")), _pixels(out.image)
    outside = np.ones((64, 64), dtype=bool)
    outside[16:48, 16:48] = False
    assert np.abs(result - init)[outside].max() <= NOISE
    assert np.abs(result - init)[~outside].mean() > 20
    assert out.sources["mask_image_sha256"] is not None


class FirstPassKept(Renderer):
    """Keeps each hires batch's first-pass images: what A1111 saves as "before highres fix"."""

    first = None

    def _second_pass(self, batch, first, size):
        self.first = first
        return super()._second_pass(batch, first, size)


def test_a_hires_row_renders_at_the_scaled_size_after_the_plain_rows_first_pass(tmp_path, images):
    renderer = FirstPassKept(LocalStore(str(tmp_path)), RendererSettings(batch_size=4, io_threads=1, cpu_threads=2))
    try:
        plain = _render(renderer, _row(0))["r0"]
        hires = _render(renderer, _hires(0, upscaler="image"))["r0"]
        assert hires.image.size == (96, 96) and (hires.width, hires.height) == (96, 96)
        assert np.abs(_pixels(renderer.first[0]) - _pixels(plain.image)).max() <= NOISE
        latent = _render(renderer, _hires(0, upscaler="latent"))["r0"]
        assert latent.image.size == (96, 96) and tuple(renderer.first.shape[-2:]) == (32, 32)  # latents at 64 px
        assert np.abs(_pixels(latent.image) - _pixels(hires.image)).mean() > 5  # the upscaler matters
    finally:
        renderer.close()


def test_an_unreadable_init_image_fails_its_row_only(renderer, images):
    out = _render(renderer, _img2img(0, images, 0.5), _img2img(1, images, 0.5, init_image=str(images / "broken.png")))
    assert out["r0"].ok and not out["r1"].ok and out["r1"].error.startswith("init image ")


@pytest.mark.parametrize("kind", ["img2img", "inpaint", "hires"])
def test_every_kind_renders_on_sdxl(renderer, images, kind):
    row = {"img2img": _img2img(0, images, 0.6, model="tiny:sdxl"), "inpaint": _inpaint(0, images, model="tiny:sdxl"),
           "hires": _hires(0, model="tiny:sdxl")}[kind]
    out = _render(renderer, row)["r0"]
    assert out.ok, out.error
    assert out.image.size == ((96, 96) if kind == "hires" else (64, 64))


def test_loras_controlnets_and_vaes_work_with_every_kind(tmp_path, renderer, images):
    from diffusers import AutoencoderKL

    from sdbatch.render.tiny.sd15 import vae_config, with_certain_posterior
    from tests.support.tiny_variants import write_tiny_controlnet, write_tiny_lora

    lora = str(write_tiny_lora(tmp_path / "style.safetensors", seed=1))
    net = str(write_tiny_controlnet(tmp_path / "cn", seed=1))
    torch.manual_seed(5)
    with_certain_posterior(AutoencoderKL(**vae_config())).save_pretrained(tmp_path / "vae")
    changes = {"loras": [{"path": lora, "weight": 1.0}], "vae": str(tmp_path / "vae"),
               "controlnets": [{"model": net, "image": str(images / "init.png"), "scale": 1.0}]}
    for make in (lambda i, **x: _img2img(i, images, 0.7, **x), lambda i, **x: _inpaint(i, images, **x), _hires):
        base = make(0)
        rows = [base] + [{**make(n + 1, **{name: value}), "seed": base["seed"], "prompt": base["prompt"]}
                         for n, (name, value) in enumerate(changes.items())]
        out = _render(renderer, *rows)
        assert all(r.ok for r in out.values()), [r.error for r in out.values()]
        for changed in ("r1", "r2", "r3"):
            assert np.abs(_pixels(out[changed].image) - _pixels(out["r0"].image)).max() > 8, (base, changed)
        assert out["r2"].vae_hash and out["r3"].controlnets_used[0]["image_sha256"]


def test_each_kind_is_built_once_over_the_loaded_modules():
    from sdbatch.render.tiny.build import build_pipeline
    from sdbatch.render.variants.kinds import Kinds

    base, kinds = build_pipeline(0), Kinds(torch.float32)
    inpaint = kinds.of(base, "inpaint")
    assert kinds.of(base, "inpaint") is inpaint and kinds.of(base, "txt2img") is base
    assert inpaint.unet is base.unet and inpaint.vae is base.vae and inpaint.text_encoder is base.text_encoder
    assert type(kinds.of(base, "img2img")).__name__ == "StableDiffusionImg2ImgPipeline"
    del base, inpaint
    gc.collect()
    assert not kinds._built  # a dropped source (a ControlNet pipeline the cache let go) takes its kinds along


def test_the_second_pass_runs_exactly_the_hires_steps_whatever_the_strength():
    """diffusers runs int(num_inference_steps x strength) steps of an img2img call; A1111 runs Hires steps."""
    for steps, strength in [(10, 0.7), (7, 0.7), (10, 0.3), (4, 1.0), (30, 0.55), (1, 0.05), (3, 0.1), (3, 0.3)]:
        total = calls.schedule_length(steps, strength)
        assert min(int(total * strength), total) == steps and int((total - 1) * strength) < steps  # the least
    assert (calls.schedule_length(3, 0.1), calls.schedule_length(3, 0.3)) == (30, 10)
    assert calls.hires_size({"hires_scale": 1.5}, (64, 48)) == (96, 72)
