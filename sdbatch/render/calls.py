"""The pipeline calls of a micro-batch, by kind: txt2img, img2img, inpaint, and a hires row's two passes.
Each returns one outcome per row: its PIL image, or the NonFiniteOutput of a row whose output overflowed."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from sdbatch.logs import quieted
from sdbatch.render.batching import Batch, control_arguments, text_arguments
from sdbatch.render.finite import NonFiniteOutput, finite_rows, overflowed

Outcome = Image.Image | NonFiniteOutput  # a row's: its image, or why it has none


def images_of(batch: Batch, images: torch.Tensor, what: str, steps: Callable[[dict], int]) -> list[Outcome]:
    """The batch's images (N, C, H, W) as PIL, each checked first: quantising turns NaN into a black image that
    would pass for one. `steps(row)`: the denoising steps the row ran, for its error."""
    finite = finite_rows(images)
    kept = iter(to_pil(images if all(finite) else images[_where(finite)]))
    return [next(kept) if ok else _overflowed(batch, row, what, steps) for row, ok in zip(batch.rows, finite)]


def _where(flags: list[bool]) -> list[int]:
    return [n for n, flag in enumerate(flags) if flag]


def _overflowed(batch: Batch, row: dict, what: str, steps: Callable[[dict], int]) -> NonFiniteOutput:
    return overflowed(what, steps(row), batch.variant.family.denoiser(batch.variant.pipeline).dtype)


def to_pil(images) -> list[Image.Image]:
    """Pipeline output (N, C, H, W) in [0, 1] as PIL images, as diffusers' "pil" output would be. Quantised
    where the images are (the GPU): a quarter of the bytes cross to the host, and the host does no float work
    while the device waits for the next batch."""
    pixels = (images.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p[..., 0], "L") if p.shape[-1] == 1 else Image.fromarray(p) for p in pixels]



def generators(batch: Batch) -> list[torch.Generator]:
    """One CPU generator per row, from its seed: a row's noise never depends on its batch or its neighbours.
    Each pass gets new ones, so the second pass's noise is the row's too."""
    return [torch.Generator("cpu").manual_seed(int(row["seed"])) for row in batch.rows]


def first_pass(batch: Batch, size: tuple[int, int], output_type: str = "pt") -> Any:
    """The rows' one call (a hires row's first), at `size`; its images as `output_type` gives them."""
    first = batch.rows[0]
    arguments = {**text_arguments(batch), "num_inference_steps": _steps(first),
                 "guidance_scale": float(first["guidance_scale"]), "generator": generators(batch),
                 **image_arguments(batch, size), **family_arguments(batch, batch.variant.pipeline)}
    with _vae_casts_quiet(), pinned_global_rng(batch):
        return batch.variant.pipeline(**arguments, output_type=output_type).images


def family_arguments(batch: Batch, pipeline) -> dict[str, Any]:
    """What the model's family takes from the rows beyond the shared arguments (true CFG, T5 length)."""
    return batch.variant.family.call_arguments(pipeline, batch.rows[0])


def _steps(row: dict[str, Any]) -> int:
    """diffusers runs int(steps x strength) of an img2img call's steps, as A1111 does; at least one, so a low
    strength still denoises rather than fails."""
    steps, strength = int(row["steps"]), row.get("strength")
    if strength is None or int(steps * strength) >= 1:
        return steps
    return schedule_length(1, strength)


def image_arguments(batch: Batch, size: tuple[int, int]) -> dict[str, Any]:
    """What each kind's pipeline takes besides the text: the size, init images and masks, strength, and the
    control images, each as the model's family names them for that kind."""
    first = batch.rows[0]
    kind = first.get("pipeline") or "txt2img"
    given = {**control_arguments(batch, kind), **batch.variant.family.size_arguments(kind, size)}
    if kind == "txt2img":
        return given
    out = {"image": [x.init for x in batch.inputs], "strength": float(first["strength"]), **given}
    if kind == "inpaint":
        out["mask_image"] = [x.mask for x in batch.inputs]
    return out


def hires_size(row: dict[str, Any], size: tuple[int, int]) -> tuple[int, int]:
    scale = float(row["hires_scale"])
    return round(size[0] * scale), round(size[1] * scale)


def steps_run(row: dict[str, Any]) -> int:
    """The denoising steps of a row's one call (a hires row's first): int(steps x strength) for an image's
    row, at least one (see _steps)."""
    strength = row.get("strength")
    return int(row["steps"]) if strength is None else max(1, int(int(row["steps"]) * strength))


def hires(batch: Batch, size: tuple[int, int], second: Callable | None = None) -> list[Outcome]:
    """A hires batch's two passes (`second`: second_pass, unless a caller wraps it). A row whose first pass
    overflowed fails there; the others go on to the second pass together."""
    outcomes, kept = _hires_first_pass(batch, size)
    keep = [n for n, x in enumerate(outcomes) if not isinstance(x, NonFiniteOutput)]
    if not keep:
        return outcomes
    images = iter((second or second_pass)(batch.pick(keep), kept, size))
    return [x if isinstance(x, NonFiniteOutput) else next(images) for x in outcomes]


def _hires_first_pass(batch: Batch, size: tuple[int, int]) -> tuple[list, Any]:
    """The first pass's outcome per row (None for finite latents) and the finite rows' output, checked before
    it is scaled: latents (A1111's "Latent" upscaler), or images to scale with Lanczos."""
    if batch.rows[0]["hires_upscaler"] != "latent":
        outcomes = images_of(batch, first_pass(batch, size), "the first pass's image", steps_run)
        return outcomes, [x for x in outcomes if not isinstance(x, NonFiniteOutput)]
    latents = first_pass(batch, size, "latent")
    finite = finite_rows(latents)
    outcomes = [None if ok else _overflowed(batch, row, "the first pass's latents", steps_run)
                for row, ok in zip(batch.rows, finite)]
    return outcomes, latents if all(finite) else latents[_where(finite)]


def second_pass(batch: Batch, first: Any, size: tuple[int, int]) -> list[Outcome]:
    """A hires row's second pass: the first pass's output scaled to the hires size, then img2img there with
    `hires_strength`, running `hires_steps` denoising steps (the row's steps when null), as A1111 does."""
    row, target = batch.rows[0], hires_size(batch.rows[0], size)
    pipeline = batch.variant.second_pass
    if row["hires_upscaler"] == "latent":
        start = batch.variant.family.resize_latents(pipeline, first, size, target)
    else:
        start = [image.resize(target, Image.Resampling.LANCZOS) for image in first]
    strength, steps = float(row["hires_strength"]), int(row["hires_steps"] or row["steps"])
    # The control images, decoded at the first pass's size, again at the second's.
    control = control_arguments(batch, "img2img", [_resized(list(x.controls), target) for x in batch.inputs])
    with _vae_casts_quiet(), pinned_global_rng(batch):
        out = pipeline(**text_arguments(batch), image=start, strength=strength,
                       num_inference_steps=schedule_length(steps, strength),
                       guidance_scale=float(row["guidance_scale"]), generator=generators(batch), output_type="pt",
                       **control, **batch.variant.family.size_arguments("img2img", target),
                       **family_arguments(batch, pipeline))
    return images_of(batch, out.images, "the hires pass's image", lambda _row: steps)


@contextlib.contextmanager
def pinned_global_rng(batch: Batch):
    """torch's global generator seeded from the batch's first row for the call, then put back: a pipeline that draws
    from it (SD3's ControlNet pipeline samples its control image's latents so) still renders the same image twice."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(batch.rows[0]["seed"]))
        yield


def _vae_casts_quiet():
    """SDXL's img2img casts a VAE that asks for float32 up on every call, and diffusers warns each time about
    float32 modules even when the VAE names none: once per batch in an overnight log, and nothing true."""
    return quieted("diffusers.models.modeling_utils")


def schedule_length(steps: int, strength: float) -> int:
    """The least num_inference_steps whose img2img call runs `steps` steps: diffusers runs int(it x strength),
    in floats, so steps / strength is only where to start looking (3 / 0.1 is a hair above 30)."""
    total = max(1, math.floor(steps / strength) - 1)
    while int(total * strength) < steps:
        total += 1
    return total


def _resized(images: list, size: tuple[int, int]) -> list:
    return [_resized(x, size) if isinstance(x, list) else x.resize(size, Image.Resampling.BICUBIC) for x in images]


def overlaid(batch: Batch, images: list[Outcome]) -> list[Outcome]:
    """Inpainted rows: the init image's own pixels outside the mask (as A1111 pastes them back), so only the
    masked part changes, whatever the VAE's round trip does to the rest."""
    processor = batch.variant.pipeline.image_processor
    return [image if isinstance(image, NonFiniteOutput) else processor.apply_overlay(x.mask, x.init, image)
            for x, image in zip(batch.inputs, images)]


def size_of(images: list[Outcome]) -> tuple[int, int]:
    """The batch's image size, from any row that has an image: (0, 0) when none has."""
    return next((x.size for x in images if not isinstance(x, NonFiniteOutput)), (0, 0))
