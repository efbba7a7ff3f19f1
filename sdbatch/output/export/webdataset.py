"""The webdataset format: data/train-*.tar of samples `{id}.{ext}` (the image), `{id}.json` (the row) and `{id}.txt`
(the prompt), as the `webdataset` library and `datasets`' webdataset builder read them."""

from __future__ import annotations

import io
import tarfile
from pathlib import PurePosixPath

import pyarrow as pa

from sdbatch.errors import UsageError
from sdbatch.output.export.features import yaml_features
from sdbatch.output.export.files import merged, write_files
from sdbatch.output.export.protocol import ExportSettings, Written
from sdbatch.output.export.source import Chunk, Source, json_text
from sdbatch.store.base import Store


class WebdatasetFormat:
    name = "webdataset"
    data_files = "data/train-*.tar"

    def write(self, source: Source, dest: Store, settings: ExportSettings, total: int) -> Written:
        first: list[tuple[pa.Schema, str]] = []  # the first sample's row schema and image extension
        keys, size = write_files(source, dest, settings, total, "tar", lambda path: _TarFile(path, first))
        return Written(keys, size, sample_features(*first[0]) if first else None)

    def merge(self, dest: Store, parts: list[Written]) -> Written:
        return merged(parts)


def sample_features(schema: pa.Schema, extension: str) -> list[dict] | None:
    """A sample's features as `datasets`' webdataset builder makes them (a column per member extension), told in
    the card: left to itself it infers them from the first 5 samples, and a column null there (a score not
    computed for the first shard, a setting only later rows use) would then fail the load."""
    row = yaml_features(schema, images=())
    if row is None:
        return None
    return [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"},
            {"name": extension, "dtype": "image"}, {"name": "json", "struct": row}, {"name": "txt", "dtype": "string"}]


class _TarFile:
    def __init__(self, path: str, first: list[tuple[pa.Schema, str]]) -> None:
        self.first = first
        # PAX: member names over 100 characters (ids may have 128) get an extended header, as the layout's tars do.
        self.tar = tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT)

    def add(self, chunk: Chunk) -> None:
        for row, image in zip(chunk.table.to_pylist(), chunk.images):
            row_id, extension = row["id"], PurePosixPath(image.name).suffix.lower()
            if not self.first:
                self.first.append((chunk.table.schema, extension[1:]))
            if "." in row_id:
                raise UsageError(f"row id {row_id!r} contains '.', which webdataset loaders read as the start of "
                                 "a file extension; export this run as --format parquet or imagefolder")
            _add(self.tar, f"{row_id}{extension}", image.data)
            _add(self.tar, f"{row_id}.json", json_text(row).encode())
            _add(self.tar, f"{row_id}.txt", (row.get("prompt") or "").encode())

    def close(self) -> None:
        self.tar.close()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed mtime and mode: the same rows make the same tar.
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))
