"""The phash step: imagehash.phash of the RGB image as 16 hex characters; equal images equal, others not."""

import imagehash
import numpy as np
from PIL import Image

from sdbatch.render.steps.phash import PhashStep
from sdbatch.render.steps.protocol import ScoreBatch


def noise(seed: int) -> Image.Image:
    # Smooth ramps hash alike (their DCT has one sign pattern); noise spreads over every frequency.
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def checkerboard() -> Image.Image:
    cells = (np.indices((64, 64)) // 8).sum(axis=0) % 2 * 255
    return Image.fromarray(np.stack([cells.astype(np.uint8)] * 3, axis=-1))


def phashes(images):
    return PhashStep().score(ScoreBatch(images, [""] * len(images)))["phash"]


def test_equal_images_hash_equal_and_different_images_differently():
    a, copy, other, third = phashes([noise(0), noise(0), noise(1), checkerboard()])
    assert a == copy and len({a, other, third}) == 3
    assert len(a) == 16 and int(a, 16) >= 0  # 64 bits as hex


def test_the_value_is_imagehash_phash_of_the_rgb_image():
    image = checkerboard()
    rgba = image.convert("RGBA")
    assert phashes([image, rgba]) == [str(imagehash.phash(image))] * 2


def test_identity_names_imagehash_and_its_version():
    assert PhashStep().identity() == {"class": "imagehash.phash", "version": imagehash.__version__, "hash_size": 8}
