"""Manifests from rendered images: the A1111 parameters embedded in each file, read back into rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from sdbatch.a1111 import parse_parameters, read_parameters, row_from_parameters
from sdbatch.adapters import CONTROLNET_TYPE, LORA_TYPE
from sdbatch.manifest import ID_PATTERN, ManifestError
from sdbatch.storage import S3Settings, open_store

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SCHEMA = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("negative_prompt", pa.string()),
                    ("seed", pa.int64()), ("steps", pa.int64()), ("guidance_scale", pa.float64()),
                    ("width", pa.int64()), ("height", pa.int64()), ("scheduler", pa.string()),
                    ("model", pa.string()), ("loras", LORA_TYPE), ("controlnets", CONTROLNET_TYPE),
                    ("source_image", pa.string())])


def manifest_from_images(location: str, s3: S3Settings | None = None) -> tuple[pa.Table, int]:
    """(manifest, images skipped for carrying no parameters) for every image under a folder or s3:// prefix."""
    store = open_store(location, s3)
    keys = [k for k in store.list() if Path(k).suffix.lower() in IMAGE_SUFFIXES]
    if not keys:
        raise ManifestError(f"no .png/.jpg/.webp images under {location}")
    rows, skipped = [], 0
    for key in keys:
        text = read_parameters(store.get(key))
        if not text:
            skipped += 1
            continue
        rows.append(_row(key, text, len(rows)))
    if not rows:
        raise ManifestError(f"none of the {len(keys)} images under {location} carries A1111 parameters")
    return pa.Table.from_pylist(rows, schema=SCHEMA), skipped


def _row(key: str, text: str, position: int) -> dict[str, Any]:
    row = row_from_parameters(parse_parameters(text))
    if not row.get("id"):
        stem = Path(key).stem
        row["id"] = stem if ID_PATTERN.match(stem) else f"img{position:06d}"
    row["source_image"] = key  # a label: which file this row reproduces
    return row
