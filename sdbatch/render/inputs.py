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
    return [uri for row in rows for _, uri in _row_images(row)]


def row_inputs(row: dict[str, Any], images: Prefetcher, size: tuple[int, int]) -> RowInputs:
    """Take every image of the row from the prefetcher, all before any failure is raised (one left untaken would
    hold a place in its window for the rest of the call), then decode each at `size`; an image that cannot be
    read or decoded raises, labelled with what it was."""
    taken = [(what, uri, _taken(images, uri)) for what, uri in _row_images(row)]
    decoded: dict[str, list[tuple[Image.Image, str]]] = {"control image": [], "init image": [], "mask image": []}
    for what, uri, fetched in taken:
        with labelled(f"{what} {uri}"):
            if isinstance(fetched, Exception):
                raise fetched
            image = decode_image(fetched, size)
            decoded[what].append((image.convert("L") if what == "mask image" else image, fetched.sha256))
    (init, init_sha256), = decoded["init image"] or [(None, None)]
    (mask, mask_sha256), = decoded["mask image"] or [(None, None)]
    controls = decoded["control image"]
    return RowInputs([image for image, _ in controls], [sha for _, sha in controls], init, mask, init_sha256,
                     mask_sha256)


def _row_images(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, uri) of each image the row reads, in use order: its control images, then init and mask."""
    found = [("control image", control["image"]) for control in row.get("controlnets") or ()]
    return found + [(name.replace("_", " "), row[name]) for name in ("init_image", "mask_image") if row.get(name)]


def _taken(images: Prefetcher, uri: str) -> Any:
    try:
        return images.get(uri)
    except Exception as exc:  # raised once the row's other images are taken too
        return exc
