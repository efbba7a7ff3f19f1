"""Manifests from rendered images: the A1111 parameters embedded in each file, read back into rows."""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sdbatch.a1111.parameters import hashes_of, parse_parameters, read_parameters, row_from_parameters, unused_fields
from sdbatch.errors import ManifestError
from sdbatch.manifest.columns import is_valid_id
from sdbatch.manifest.controlnets import CONTROLNET_TYPE
from sdbatch.manifest.references import LORA_TYPE
from sdbatch.output.layouts import LAYOUTS
from sdbatch.output.layouts.layout import FoundImage
from sdbatch.settings import S3Settings
from sdbatch.store import open_store

# Rows held before they are written out: a run's images may be far more than memory holds as rows.
BATCH_ROWS = 10_000
SCHEMA = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("negative_prompt", pa.string()),
                    ("seed", pa.int64()), ("steps", pa.int64()), ("guidance_scale", pa.float64()),
                    ("width", pa.int64()), ("height", pa.int64()), ("scheduler", pa.string()),
                    ("model", pa.string()), ("vae", pa.string()), ("loras", LORA_TYPE),
                    ("controlnets", CONTROLNET_TYPE), ("prompt_syntax", pa.string()), ("clip_skip", pa.int64()),
                    ("ti_hashes", pa.string()), ("init_image", pa.string()), ("mask_image", pa.string()),
                    ("strength", pa.float64()), ("hires_scale", pa.float64()), ("hires_steps", pa.int64()),
                    ("hires_strength", pa.float64()), ("hires_upscaler", pa.string()), ("source_image", pa.string())])


def manifest_from_images(location: str, s3: S3Settings | None = None) -> tuple[pa.Table, int]:
    """(manifest, images skipped for carrying no parameters) for every image under a folder or s3:// prefix,
    loose or inside webdataset shard tars."""
    tally = ImagesRead()
    table = pa.Table.from_batches(list(_batches(location, s3, tally)), schema=SCHEMA)
    return table, tally.skipped


def write_manifest_from_images(location: str, output: str, s3: S3Settings | None = None,
                               strict: bool = False) -> ImagesRead:
    """The same manifest written to `output` a batch of rows at a time. Nothing is left at `output` unless all
    went well; with `strict`, an image whose parameters ask for what sdbatch does not render fails it."""
    tally, partial = ImagesRead(), f"{output}.partial"
    try:
        with pq.ParquetWriter(partial, SCHEMA) as writer:
            for batch in _batches(location, s3, tally):
                writer.write_batch(batch)
        if strict and tally.dropped:
            raise ManifestError(f"{location}: the images ask for what sdbatch does not render ({tally.summary()}); "
                                "drop --strict to render them without it")
        os.replace(partial, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return tally


@dataclass
class ImagesRead:
    seen: int = 0
    rows: int = 0
    skipped: int = 0  # images without parameters
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)  # field -> images with it
    embeddings: collections.Counter[str] = field(default_factory=collections.Counter)  # TI name -> images

    def summary(self) -> str:
        return "; ".join(f"{name} in {count} image(s)" for name, count in sorted(self.dropped.items()))


def _batches(location: str, s3: S3Settings | None, tally: ImagesRead) -> Iterator[pa.RecordBatch]:
    store = open_store(location, s3)
    rows: list[dict[str, Any]] = []
    for found in _images(store):
        tally.seen += 1
        text = read_parameters(found.data)
        if not text:
            tally.skipped += 1
            continue
        fields = parse_parameters(text)
        tally.dropped.update(unused_fields(fields))
        tally.embeddings.update(name for name, _ in hashes_of(fields.get("TI hashes")))
        rows.append(_row(found, fields, tally.rows))
        tally.rows += 1
        if len(rows) == BATCH_ROWS:
            yield pa.RecordBatch.from_pylist(rows, schema=SCHEMA)
            rows = []
    if rows:
        yield pa.RecordBatch.from_pylist(rows, schema=SCHEMA)
    if not tally.seen:
        raise ManifestError(f"no .png/.jpg/.webp images (or .tar shards of them) under {location}")
    if not tally.rows:
        raise ManifestError(f"none of the {tally.seen} images under {location} carries A1111 parameters")


def _images(store) -> Iterator[FoundImage]:
    """Every image under the store as the layouts find them: loose files, members of shard tars."""
    for key in store.list():
        for layout in LAYOUTS.values():
            yield from layout.images_in(store, key)


def _row(found: FoundImage, fields: dict[str, Any], position: int) -> dict[str, Any]:
    row = row_from_parameters(fields)
    if not row.get("id"):
        stem = Path(found.name).stem
        row["id"] = stem if is_valid_id(stem) else f"img{position:06d}"
    row["source_image"] = found.ref  # a label: which file this row reproduces
    return row
