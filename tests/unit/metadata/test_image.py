"""Texts found wherever an image format keeps them; a file that is not a whole image says which kind it is."""

import io

import pytest
from PIL import Image

from sdbatch.metadata.image import UnreadableImage, image_texts
from tests.support.generator_images import png, webp_with_exif


def test_png_text_before_or_after_the_pixels_and_in_every_chunk_kind():
    assert image_texts(png({"parameters": "a fox"})).texts == {"parameters": "a fox"}
    assert image_texts(png({"parameters": "a fox"}, after_pixels=True)).texts == {"parameters": "a fox"}
    assert image_texts(png({"parameters": "ein Fuchs im Schnee ❄"})).texts["parameters"] == "ein Fuchs im Schnee ❄"
    out = io.BytesIO()
    info = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
    info.add_text("Comment", "x" * 5000, zip=True)  # zTXt
    Image.new("RGB", (8, 8)).save(out, "PNG", pnginfo=info)
    found = image_texts(out.getvalue())
    assert found.texts["Comment"] == "x" * 5000 and (found.width, found.height, found.format) == (8, 8, "PNG")


def test_comfyui_webp_keeps_its_graph_in_exif_make():
    found = image_texts(webp_with_exif({0x010F: 'Prompt:{"3": {"class_type": "KSampler"}}'}))
    assert found.texts["prompt"] == '{"3": {"class_type": "KSampler"}}' and found.format == "WEBP"


@pytest.mark.parametrize("data, kind", [
    (b"", "empty"),
    (png({"parameters": "a fox"})[:-30], "truncated"),
    (png({"parameters": "a fox"})[:20], "truncated"),
    (b"this is a text file, not an image", "not an image"),
])
def test_a_file_that_is_not_a_whole_image_says_which_kind(data, kind):
    with pytest.raises(UnreadableImage) as info:
        image_texts(data)
    assert info.value.kind == kind


def test_a_damaged_chunk_fails_its_checksum():
    data = bytearray(png({"parameters": "a fox"}))
    data[data.index(b"a fox")] ^= 0x20
    with pytest.raises(UnreadableImage, match="damaged: the tEXt chunk"):
        image_texts(bytes(data))
