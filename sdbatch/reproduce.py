"""Manifests from rendered images: the A1111 parameters embedded in each file, read back into rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from sdbatch.a1111 import parse_parameters, read_parameters, row_from_parameters
from sdbatch.errors import ManifestError
from sdbatch.manifest import ID_PATTERN
from sdbatch.settings import S3Settings
from sdbatch.store import open_store
from sdbatch.variant_columns import CONTROLNET_TYPE, LORA_TYPE
from sdbatch.webdataset import members

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SCHEMA = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("negative_prompt", pa.string()),
                    ("seed", pa.int64()), ("steps", pa.int64()), ("guidance_scale", pa.float64()),
                    ("width", pa.int64()), ("height", pa.int64()), ("scheduler", pa.string()),
                    ("model", pa.string()), ("vae", pa.string()), ("loras", LORA_TYPE),
                    ("controlnets", CONTROLNET_TYPE),
                    ("source_image", pa.string())])


def manifest_from_images(location: str, s3: S3Settings | None = None) -> tuple[pa.Table, int]:
    """(manifest, images skipped for carrying no parameters) for every image under a folder or s3:// prefix,
    loose or inside webdataset shard tars."""
    store = open_store(location, s3)
    keys = [k for k in store.list() if Path(k).suffix.lower() in (*IMAGE_SUFFIXES, ".tar")]
    rows, skipped, seen = [], 0, 0
    for name, data in _images(store, keys):
        seen += 1
        text = read_parameters(data)
        if not text:
            skipped += 1
            continue
        rows.append(_row(name, text, len(rows)))
    if not seen:
        raise ManifestError(f"no .png/.jpg/.webp images (or .tar shards of them) under {location}")
    if not rows:
        raise ManifestError(f"none of the {seen} images under {location} carries A1111 parameters")
    return pa.Table.from_pylist(rows, schema=SCHEMA), skipped


def _images(store, keys: list[str]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each image: a key, or a tar member as the webdataset layout's `image` names it."""
    for key in keys:
        if not key.endswith(".tar"):
            yield key, store.get(key)
            continue
        for member, data in members(store.get(key), IMAGE_SUFFIXES):
            yield f"{key}#{member}", data


def _row(key: str, text: str, position: int) -> dict[str, Any]:
    row = row_from_parameters(parse_parameters(text))
    if not row.get("id"):
        stem = Path(key.rpartition("#")[2]).stem  # a tar member: its own name
        row["id"] = stem if ID_PATTERN.match(stem) else f"img{position:06d}"
    row["source_image"] = key  # a label: which file this row reproduces
    return row
