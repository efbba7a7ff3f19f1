"""A row's input images (control, init, mask): which to prefetch, and each decoded at the size it renders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from sdbatch.render.variants.fetch import Prefetcher, decode_image, labelled


@dataclass(frozen=True)
class RowInputs:
    """A row's decoded input images and their SHA-256s."""

    controls: list[Image.Image] = field(default_factory=list)  # one per ControlNet, at the row's size
    control_hashes: list[str] = field(default_factory=list)
    init: Image.Image | None = None  # img2img and inpaint: RGB at the row's size
    mask: Image.Image | None = None  # inpaint: "L" at the row's size; white is repainted
    init_sha256: str | None = None
    mask_sha256: str | None = None


def image_uris(rows: list[dict[str, Any]]) -> list[str]:
    """Every image the rows read, in use order (repeats included: the prefetcher counts uses)."""
    uris = []
    for row in rows:
        uris += [c["image"] for c in row.get("controlnets") or ()]
        uris += [row[name] for name in ("init_image", "mask_image") if row.get(name)]
    return uris


def row_inputs(row: dict[str, Any], images: Prefetcher, size: tuple[int, int]) -> RowInputs:
    """Take every image of the row from the prefetcher (in image_uris' order) and decode it at `size`; an image
    that cannot be read or decoded raises, labelled with what it was."""
    controls, hashes = [], []
    for control in row.get("controlnets") or ():
        with labelled(f"control image {control['image']}"):
            fetched = images.get(control["image"])
            controls.append(decode_image(fetched, size))
        hashes.append(fetched.sha256)
    init, init_sha256 = _decoded(images, row.get("init_image"), "init image", size, "RGB")
    mask, mask_sha256 = _decoded(images, row.get("mask_image"), "mask image", size, "L")
    return RowInputs(controls, hashes, init, mask, init_sha256, mask_sha256)


def _decoded(images: Prefetcher, uri: str | None, what: str, size: tuple[int, int],
             mode: str) -> tuple[Image.Image | None, str | None]:
    if not uri:
        return None, None
    with labelled(f"{what} {uri}"):
        fetched = images.get(uri)
        return decode_image(fetched, size).convert(mode), fetched.sha256
