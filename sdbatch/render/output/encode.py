"""Image encoding: a PIL image to the bytes of the chosen format, with its A1111 parameters embedded."""

from __future__ import annotations

import io

from PIL import Image

from sdbatch.a1111 import save_options

PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def encode_image(image: Image.Image, image_format: str, quality: int, parameters: str | None = None) -> bytes:
    """The encoded file; parameters (A1111 text) go in a PNG text chunk or the EXIF UserComment."""
    buffer = io.BytesIO()
    options = {} if image_format == "png" else {"quality": quality}
    if parameters:
        options.update(save_options(image_format, parameters))
    image.save(buffer, format=PIL_FORMATS[image_format], **options)
    return buffer.getvalue()


def to_pil(images) -> list[Image.Image]:
    """Pipeline output (N, C, H, W) in [0, 1] as PIL images, as diffusers' "pil" output would be. Quantised
    where the images are (the GPU): a quarter of the bytes cross to the host, and the host does no float work
    while the device waits for the next batch."""
    import torch

    pixels = (images.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p[..., 0], "L") if p.shape[-1] == 1 else Image.fromarray(p) for p in pixels]
