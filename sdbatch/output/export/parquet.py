"""The parquet format: data/train-*.parquet with the image itself in `image` (Hugging Face's Image feature) and every
column of the row, row groups of ~100 images; what `datasets` and the Hub read fastest."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from sdbatch.output.export.features import yaml_features
from sdbatch.output.export.files import merged, write_files
from sdbatch.output.export.protocol import ExportSettings, Written
from sdbatch.output.export.source import Chunk, Source
from sdbatch.store.base import Store

# The storage of datasets' Image feature: the encoded file and its name (which tells the format).
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
# The schema metadata `datasets` reads features from. Only `image` is named: every other column's feature follows
# from its Arrow type, in every version of `datasets` (whose names for list features changed in 4.0).
HF_METADATA = {b"huggingface": json.dumps({"info": {"features": {"image": {"_type": "Image"}}}}).encode()}


class ParquetFormat:
    name = "parquet"
    data_files = "data/train-*.parquet"

    def write(self, source: Source, dest: Store, settings: ExportSettings, total: int) -> Written:
        schema: list[pa.Schema] = []  # the first chunk's, which every file keeps
        keys, size = write_files(source, dest, settings, total, "parquet",
                                 lambda path: _ParquetFile(path, settings.rows_per_group, schema))
        return Written(keys, size, yaml_features(schema[0]) if schema else None)

    def merge(self, dest: Store, parts: list[Written]) -> Written:
        return merged(parts)


def image_table(chunk: Chunk) -> pa.Table:
    images = pa.array([{"bytes": image.data, "path": image.name} for image in chunk.images], IMAGE_TYPE)
    table = chunk.table
    return pa.table([images, *table.columns], names=["image", *table.column_names])


class _ParquetFile:
    def __init__(self, path: str, rows_per_group: int, schema: list[pa.Schema]) -> None:
        self.path, self.rows_per_group, self.schema = path, rows_per_group, schema
        self.writer: pq.ParquetWriter | None = None

    def add(self, chunk: Chunk) -> None:
        table = image_table(chunk)
        if not self.schema:
            self.schema.append(table.schema.with_metadata(HF_METADATA))
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, self.schema[0])
        self.writer.write_table(table.cast(self.schema[0]), row_group_size=self.rows_per_group)

    def close(self) -> None:
        if self.writer is None:  # a file whose every image went missing: still a valid, empty file
            pq.write_table(self.schema[0].empty_table(), self.path)
        else:
            self.writer.close()
