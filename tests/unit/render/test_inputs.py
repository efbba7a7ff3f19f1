"""A row's input images: every one taken from the prefetcher even when one fails, decoded at the row's size."""

import io

import pytest
from PIL import Image

from sdbatch.errors import VariantError
from sdbatch.render.inputs import image_uris, row_inputs
from sdbatch.render.variants.fetch import Fetched, Fetcher, Prefetcher


def _png(size: tuple[int, int], color: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


class _Images(Fetcher):
    def read(self, uri):
        if uri == "missing":
            raise FileNotFoundError(uri)
        return Fetched(_png((16, 8), "white"), f"sha-{uri}")


def test_a_row_whose_control_image_fails_still_takes_its_init_and_mask_so_the_window_moves_on():
    failing = {"controlnets": [{"image": "missing"}], "init_image": "i1", "mask_image": "m1"}
    after = {"init_image": "i2", "mask_image": "m2"}
    assert image_uris([failing, after]) == ["missing", "i1", "m1", "i2", "m2"]
    images = Prefetcher(_Images(), image_uris([failing, after]), threads=1, ahead=2)
    with pytest.raises(VariantError, match="control image missing: FileNotFoundError"):
        row_inputs(failing, images, (8, 8))
    assert set(images._futures) == {"i2", "m2"}  # nothing of the failed row holds the window
    inputs = row_inputs(after, images, (8, 4))
    assert (inputs.init.size, inputs.init.mode, inputs.mask.mode) == ((8, 4), "RGB", "L")
    assert (inputs.init_sha256, inputs.mask_sha256, inputs.controls) == ("sha-i2", "sha-m2", [])
    images.close()
