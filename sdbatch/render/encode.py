"""Image encoding: a PIL image to the bytes of the chosen format."""

from __future__ import annotations

import io

from PIL import Image

PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def encode_image(image: Image.Image, image_format: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    options = {} if image_format == "png" else {"quality": quality}
    image.save(buffer, format=PIL_FORMATS[image_format], **options)
    return buffer.getvalue()
