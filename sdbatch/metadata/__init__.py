"""What generators embed in their images, read back into manifest rows: one module per generator, one registry."""

from __future__ import annotations

from sdbatch.metadata.a1111 import A1111
from sdbatch.metadata.comfyui import ComfyUI
from sdbatch.metadata.fooocus import Fooocus
from sdbatch.metadata.image import ImageTexts, UnreadableImage, image_texts
from sdbatch.metadata.invokeai import InvokeAI
from sdbatch.metadata.novelai import NovelAI
from sdbatch.metadata.reading import Generator, Reading

__all__ = ["GENERATORS", "Generator", "ImageTexts", "Reading", "UnreadableImage", "image_texts", "read_image"]

# In the order they are asked: A1111 first (sdbatch's own images carry its text), Fooocus before anything else
# that reads a JSON `parameters`.
GENERATORS: tuple[Generator, ...] = (A1111(), Fooocus(), ComfyUI(), NovelAI(), InvokeAI())


def read_image(data: bytes) -> Reading | None:
    """The row an image's metadata describes (None: it carries none a generator here writes); UnreadableImage
    for a file that is not a whole image."""
    image = image_texts(data)
    for generator in GENERATORS:
        if generator.claims(image):
            return generator.read(image)
    return None
