"""Image formats: a PIL image to the bytes of its format with its A1111 parameters embedded; extensions, suffixes."""

from __future__ import annotations

import io

from PIL import Image

from sdbatch.a1111.parameters import save_options

PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
# The file extension each format is written with.
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
# What image files are called when readers look for them (another tool's .jpeg included).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def encode_image(image: Image.Image, image_format: str, quality: int, parameters: str | None = None) -> bytes:
    """The encoded file; parameters (A1111 text) go in a PNG text chunk or the EXIF UserComment."""
    buffer = io.BytesIO()
    options = {} if image_format == "png" else {"quality": quality}
    if parameters:
        options.update(save_options(image_format, parameters))
    image.save(buffer, format=PIL_FORMATS[image_format], **options)
    return buffer.getvalue()

