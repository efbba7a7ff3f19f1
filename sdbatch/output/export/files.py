"""Data files of a planned count (parquet, webdataset): `data/train-00000-of-00004.{ext}`, each written to a local
file and uploaded once it is complete, so disk and memory hold one file at a time."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from typing import Protocol

from sdbatch.errors import UsageError
from sdbatch.output.export.protocol import SPLIT, ExportSettings, Written
from sdbatch.output.export.source import Chunk, Source
from sdbatch.store.base import Store

# Bytes per image assumed when the first chunk has no image to measure (all missing): a 1024 x 1024 PNG.
FALLBACK_IMAGE_BYTES = 1_500_000


class DataFile(Protocol):
    """One data file being written locally."""

    def add(self, chunk: Chunk) -> None: ...
    def close(self) -> None: ...


def data_key(index: int, count: int, extension: str) -> str:
    return f"data/{SPLIT}-{index:05d}-of-{count:05d}.{extension}"


def write_files(source: Source, dest: Store, settings: ExportSettings, total: int, extension: str,
                open_file: Callable[[str], DataFile]) -> tuple[tuple[str, ...], int]:
    """Write the source's `total` rows into files of rows_per_file rows each (the count known before the first
    file is named); returns the keys written and their bytes."""
    per_file = settings.rows_per_file
    size = math.gcd(per_file, settings.rows_per_group) if per_file else settings.rows_per_group
    chunks = source.samples(size, settings.threads)
    keys: list[str] = []
    written = 0
    with tempfile.TemporaryDirectory(prefix="sdbatch-export-") as tmp:
        path = os.path.join(tmp, f"part.{extension}")
        current: DataFile | None = None
        count = opened = 0
        for chunk in chunks:
            if not count:  # the first chunk sizes the files
                per_file = per_file or planned_rows(chunk, settings)
                count = max(1, math.ceil(total / per_file))
            index = chunk.index * size // per_file
            if index >= count:
                raise UsageError(f"{source.store.uri} gained rows during the export (more than the {total} "
                                 "counted): a run is still committing shards there; export it once it stops")
            if current is None or index != opened:  # chunks come in order, so files do too
                written += _finish(current, dest, path, keys)
                current, opened = open_file(path), index
                keys.append(data_key(index, count, extension))
            current.add(chunk)
        written += _finish(current, dest, path, keys)
    return tuple(keys), written


def merged(parts: list[Written]) -> Written:
    """Windows' data files as one export: their files in order, their bytes, the first window's features."""
    features = next((part.features for part in parts if part.features), None)
    return Written(tuple(key for part in parts for key in part.files), sum(part.bytes for part in parts), features)


def planned_rows(first: Chunk, settings: ExportSettings) -> int:
    """Rows per file: as many as max_file_bytes holds at the first images' mean size, in whole row groups."""
    sizes = [len(image.data) for image in first.images]
    mean = sum(sizes) / len(sizes) if sizes else FALLBACK_IMAGE_BYTES
    groups = max(1, int(settings.max_file_bytes // (mean * settings.rows_per_group)))
    return groups * settings.rows_per_group


def _finish(current: DataFile | None, dest: Store, path: str, keys: list[str]) -> int:
    if current is None:
        return 0
    current.close()
    size = os.path.getsize(path)
    dest.upload(path, keys[-1])
    os.unlink(path)
    return size
