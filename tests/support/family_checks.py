"""What every diffusion-transformer family must show on its tiny model, called by each family's test module: a plain
prompt rendered as diffusers' own pipeline renders it, LoRAs and ControlNets that act (and weight 0 that does not),
assets of another family refused by row, image rows as on SD1.x."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdbatch.render.renderer import Renderer
from sdbatch.settings import RendererSettings
from sdbatch.store.local import LocalStore

CHANGED = 8  # out of 255: a LoRA or ControlNet moves pixels by far more than this
NOISE = 1  # CPU float noise between one call and another of the same rows
SIZE = 64


def new_renderer(root: Path, **settings) -> Renderer:
    return Renderer(LocalStore(str(root)), RendererSettings(cpu_threads=2, io_threads=1, **settings))


def module_renderer(tmp_path_factory, family: str):
    """A renderer for one test module (its body is a fixture's): closed when the module is done."""
    renderer = new_renderer(tmp_path_factory.mktemp(f"{family}-out"))
    yield renderer
    renderer.close()


def write_assets(root: Path, family: str, other: str) -> dict[str, str]:
    """A LoRA and a ControlNet of the tiny model of `family` and of `other`'s (to be refused), and the inputs."""
    from tests.support.tiny_variants import write_tiny_controlnet, write_tiny_lora

    return {"lora": str(write_tiny_lora(root / f"{family}.safetensors", seed=1, family=family)),
            "other_lora": str(write_tiny_lora(root / f"{other}.safetensors", seed=1, family=other)),
            "cn": str(write_tiny_controlnet(root / f"cn-{family}", seed=1, family=family)),
            "other_cn": str(write_tiny_controlnet(root / f"cn-{other}", seed=1, family=other)),
            **write_inputs(root)}


def write_inputs(root: Path) -> dict[str, str]:
    """An init image of noise, a mask whose white square is repainted, two control images."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / "init.png")
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / "edges.png")
    Image.fromarray(np.full((SIZE, SIZE, 3), 255, dtype=np.uint8)).save(root / "white.png")
    return {name: str(root / f"{name}.png") for name in ("init", "mask", "edges", "white")}


def row(i: int, model: str, **extra) -> dict:
    """A renderer row as normalize writes it: every column. T5 reads 32 tokens (the pipelines' default, hundreds, is
    most of a tiny model's time); tests of the default pass max_sequence_length=None."""
    base = {"id": f"r{i}", "prompt": "a small test picture", "negative_prompt": "", "seed": 5, "model": model,
            "width": SIZE, "height": SIZE, "steps": 3, "scheduler": None, "guidance_scale": 4.0, "loras": [],
            "controlnets": [], "pipeline": "txt2img", "strength": None, "hires_scale": None,
            "prompt_syntax": "a1111", "max_sequence_length": 32}
    return {**base, **extra}


def render(renderer: Renderer, *rows: dict) -> dict:
    return {r.row["id"]: r for r in renderer.render_rows(list(rows))}


def pixels(rendered) -> np.ndarray:
    assert rendered.error is None, rendered.error
    return np.asarray(rendered.image.convert("RGB"), dtype=np.int16)


def pixels_of_file(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def diffusers_image(pipeline_class, folder: Path, row: dict, **call) -> np.ndarray:
    """The row rendered by diffusers' own pipeline, loaded afresh from the model's folder: floats in [0, 1]."""
    pipe = pipeline_class.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt=row["prompt"], negative_prompt=row["negative_prompt"] or None,
                 num_inference_steps=row["steps"], guidance_scale=row["guidance_scale"], width=row["width"],
                 height=row["height"], generator=torch.Generator("cpu").manual_seed(row["seed"]), output_type="np",
                 **call).images[0]
    return image


def check_renders_as_diffusers(renderer: Renderer, pipeline_class, folder: Path, model: str, **settings) -> None:
    """A plain prompt, with and without a T5 length of its own: within 1/255 of diffusers' pipeline."""
    for length in (None, 48):
        ours_row = row(0, model, negative_prompt="blurry", max_sequence_length=length, **settings)
        rendered = render(renderer, ours_row)["r0"]
        call = {"max_sequence_length": length} if length else {}
        theirs = diffusers_image(pipeline_class, folder, ours_row, **call)
        assert np.abs(pixels(rendered) / 255 - theirs).max() <= 1 / 255, length
        expected = length or renderer.model(model).family.descriptor.max_sequence_length
        assert rendered.recorded["max_sequence_length"] == expected


def check_loras(renderer: Renderer, model: str, lora: str, other_lora: str, words: str) -> None:
    """Weight 0 is the base image, weight 1 changes it, the LoRA is off again after; another family's fails."""
    def with_lora(i, path, weight):
        return row(i, model, loras=[{"path": path, "weight": weight}])

    out = render(renderer, row(0, model), with_lora(1, lora, 0.0), with_lora(2, lora, 1.0),
                 with_lora(3, other_lora, 1.0), row(4, model))
    base = pixels(out["r0"])
    assert np.abs(pixels(out["r1"]) - base).max() <= NOISE
    assert np.abs(pixels(out["r2"]) - base).max() > CHANGED
    assert np.abs(pixels(out["r4"]) - base).max() <= NOISE
    assert "(a LoRA for another model family?)" in (out["r3"].error or ""), out["r3"].error


def check_controlnets(renderer: Renderer, model: str, net: str, other_net: str, images: dict, words: str) -> None:
    """A ControlNet changes the image, its image matters, two run together, another family's fails its row."""
    def controlled(i, nets, image="edges"):
        return row(i, model, controlnets=[{"model": m, "image": images[image], "scale": 1.0} for m in nets])

    out = render(renderer, row(0, model), controlled(1, [net]), controlled(2, [net], "white"),
                 controlled(3, [net, net]), controlled(4, [other_net]))
    base = pixels(out["r0"])
    assert np.abs(pixels(out["r1"]) - base).max() > CHANGED
    assert np.abs(pixels(out["r2"]) - pixels(out["r1"])).max() > CHANGED
    assert np.abs(pixels(out["r3"]) - pixels(out["r1"])).max() > CHANGED  # the second unit adds its residuals
    assert f"but this row's model is {words}" in out["r4"].error, out["r4"].error


def vae_round_trip(renderer: Renderer, model: str, path: str) -> np.ndarray:
    """The init image as the model's VAE gives it back: all that any strength can keep of it (a tiny VAE has random
    weights, so this is far from the file's pixels)."""
    pipe = renderer.model(model).pipeline
    with torch.inference_mode():
        latents = pipe.vae.encode(pipe.image_processor.preprocess(Image.open(path).convert("RGB"))).latent_dist.mode()
        decoded = pipe.image_processor.postprocess(pipe.vae.decode(latents).sample, output_type="pil")[0]
    return np.asarray(decoded.convert("RGB"), dtype=np.int16)


def check_image_rows(renderer: Renderer, model: str, images: dict) -> None:
    """img2img keeps the init image at a low strength and repaints it at a high one, inpainting keeps every pixel
    outside the mask, a hires row renders at the scaled size with either upscaler."""
    init = pixels_of_file(images["init"])

    def image_row(i, **extra):
        return row(i, model, init_image=images["init"], steps=6, **extra)

    out = render(renderer, image_row(0, pipeline="img2img", strength=0.1),
                 image_row(1, pipeline="img2img", strength=1.0),
                 image_row(2, pipeline="inpaint", strength=0.9, mask_image=images["mask"]))
    kept = vae_round_trip(renderer, model, images["init"])
    assert np.abs(pixels(out["r0"]) - kept).mean() < 15
    assert np.abs(pixels(out["r1"]) - kept).mean() > 30
    outside = np.ones((SIZE, SIZE), dtype=bool)
    outside[16:48, 16:48] = False
    inpainted = np.abs(pixels(out["r2"]) - init)
    assert inpainted[outside].max() <= NOISE and inpainted[~outside].mean() > 20
    for upscaler in ("latent", "image"):
        hires = render(renderer, row(9, model, hires_scale=1.5, hires_steps=None, hires_strength=0.6,
                                     hires_upscaler=upscaler))["r9"]
        assert hires.image.size == (96, 96) and (hires.width, hires.height) == (96, 96), upscaler
