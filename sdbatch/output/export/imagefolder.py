"""The imagefolder format (train/{folder}/{id}.{ext} beside train/metadata.parquet), and the same metadata written
into a files-layout output itself, so `load_dataset("imagefolder", data_dir=OUTPUT)` reads the run where it is."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdbatch.errors import UsageError
from sdbatch.output.export.features import yaml_features
from sdbatch.output.export.protocol import SPLIT, ExportSettings, Written
from sdbatch.output.export.source import IMAGE_REF, Source, dataset_columns, json_text
from sdbatch.store.base import Store

# Parquet carries each column's type. datasets (3.4 on) infers a metadata.jsonl's types from its first 10 MB, and
# a column that is null there (a score not computed yet, a label set only later) then fails the whole load.
METADATA_KINDS = ("parquet", "jsonl")


def metadata_key(kind: str, folder: str = "") -> str:
    return f"{folder}metadata.{kind}"


class MetadataFile:
    """An imagefolder metadata file written locally, a table at a time: `file_name` first, then the row."""

    def __init__(self, path: str, kind: str) -> None:
        if kind not in METADATA_KINDS:
            raise UsageError(f"metadata kind {kind!r}: use one of {', '.join(METADATA_KINDS)}")
        self.path, self.kind = path, kind
        self.writer: pq.ParquetWriter | None = None
        self.lines = open(path, "w", encoding="utf-8") if kind == "jsonl" else None
        self.schema: pa.Schema | None = None  # the first table's, with file_name

    def add(self, file_names: list[str], table: pa.Table) -> None:
        table = table.add_column(0, "file_name", pa.array(file_names, pa.string()))
        if self.lines is not None:
            self.lines.writelines(json_text(row) + "\n" for row in table.to_pylist())
            return
        if self.writer is None:
            self.schema = table.schema
            self.writer = pq.ParquetWriter(self.path, self.schema)
        self.writer.write_table(table.cast(self.schema))

    def close(self) -> None:
        if self.lines is not None:
            self.lines.close()
        elif self.writer is not None:
            self.writer.close()


def write_imagefolder_metadata(store: Store, kind: str = "parquet") -> str:
    """Write metadata.{kind} at the root of a files-layout output: a row per ok image, `file_name` its key, then
    every column an export keeps; returns its key. The other kind's file is deleted (datasets refuses both)."""
    key = write_root_metadata(store, kind)
    if key is None:
        raise UsageError(f"{store.uri} has no ok image yet; write the metadata once its run has committed some")
    return key


def write_root_metadata(store: Store, kind: str = "parquet") -> str | None:
    """write_imagefolder_metadata, but a run with no ok image gets no file and None (a run whose every row
    failed has no image to describe)."""
    source = Source(store)
    if not source.layout.loose_images:
        raise UsageError(f"{store.uri} is in the {source.layout.name} layout, whose images are not files of their own; "
                         "`sdbatch export` it as --format imagefolder, parquet or webdataset instead")
    with RootMetadata(store, kind) as metadata:
        for table in source.rows():
            metadata.add_kept(table)
    return metadata.key if metadata.written else None


class RootMetadata:
    """The imagefolder metadata at an output's root, written from results batches as they stream by (compaction's
    own pass, at a run's end): uploaded on a clean exit when it holds a row; the other kind's file removed."""

    def __init__(self, store: Store, kind: str = "parquet") -> None:
        self.store, self.kind, self.key, self.rows = store, kind, metadata_key(kind), 0

    def __enter__(self) -> RootMetadata:
        self._tmp = tempfile.TemporaryDirectory(prefix="sdbatch-metadata-")
        self.file = MetadataFile(os.path.join(self._tmp.name, self.key), self.kind)
        return self

    def add(self, batch: pa.Table) -> None:
        """A joined results batch: its ok rows, as a dataset keeps them."""
        ok = batch.filter(pc.equal(batch.column("status"), "ok"))
        if ok.num_rows:
            self.add_kept(dataset_columns(ok))

    @property
    def written(self) -> bool:
        return self.rows > 0

    def add_kept(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        self.file.add(table.column(IMAGE_REF).to_pylist(), table.drop_columns([IMAGE_REF]))

    def __exit__(self, kind, *exc) -> None:
        try:
            self.file.close()
            if kind is None and self.written:
                self.store.upload(self.file.path, self.key)
                for other in METADATA_KINDS:
                    if other != self.kind:
                        self.store.delete(metadata_key(other))
        finally:
            self._tmp.cleanup()


class ImagefolderFormat:
    name = "imagefolder"
    data_files = f"{SPLIT}/**"

    def __init__(self, metadata: str = "parquet") -> None:
        self.metadata = metadata  # the metadata file's kind: parquet keeps the column types

    def write(self, source: Source, dest: Store, settings: ExportSettings, total: int) -> Written:
        folder = f"{SPLIT}/"
        first = row = 0 if source.window is None else source.window.start  # folders: numbered over the export
        written = 0
        with tempfile.TemporaryDirectory(prefix="sdbatch-export-") as tmp, \
                ThreadPoolExecutor(settings.threads, thread_name_prefix="sdbatch-export-write") as pool:
            metadata = MetadataFile(os.path.join(tmp, metadata_key(self.metadata)), self.metadata)
            for chunk in source.samples(settings.rows_per_group, settings.threads):
                names = [f"{(row + n) // settings.files_per_folder:05d}/{PurePosixPath(image.name).name}"
                         for n, image in enumerate(chunk.images)]
                # Every put of the chunk done before the next: at most a chunk of images held here.
                list(pool.map(lambda name, image: dest.put(folder + name, image.data), names, chunk.images))
                metadata.add(names, chunk.table)
                written += sum(len(image.data) for image in chunk.images)
                row += len(names)
            metadata.close()
            key = metadata_key(self.metadata, folder if source.window is None else _piece(source.window.index))
            if source.window is None or row > first:  # a window whose every image is missing has no piece
                dest.upload(metadata.path, key)
            if source.window is None:
                written += os.path.getsize(metadata.path)
        return Written((key,), written, self._features(metadata.schema))

    def merge(self, dest: Store, parts: list[Written]) -> Written:
        """The windows' metadata pieces joined, in order, into the one train/metadata file; the pieces deleted."""
        pieces = [key for part in parts for key in part.files if dest.exists(key)]
        with tempfile.TemporaryDirectory(prefix="sdbatch-export-") as tmp:
            metadata = MetadataFile(os.path.join(tmp, metadata_key(self.metadata)), self.metadata)
            for piece in pieces:
                path = os.path.join(tmp, "piece")
                dest.download(piece, path)
                for table in _piece_tables(path, self.metadata):
                    metadata.add(table.column("file_name").to_pylist(), table.drop_columns(["file_name"]))
            metadata.close()
            key = metadata_key(self.metadata, f"{SPLIT}/")
            dest.upload(metadata.path, key)
            size = os.path.getsize(metadata.path)
        for piece in pieces:
            dest.delete(piece)
        return Written((key,), sum(part.bytes for part in parts) + size, self._features(metadata.schema))

    @staticmethod
    def _features(schema: pa.Schema | None) -> list[dict] | None:
        features = yaml_features(schema, images=("file_name",)) if schema else None
        if features:
            features[0]["name"] = "image"  # datasets names the column of file_name's images `image`
        return features


def _piece(index: int) -> str:
    # Beside the split, not in it: a piece left by a stopped export is never read as the split's metadata. At the
    # root, not in a folder of its own, which a local destination would keep, empty, once the pieces are joined.
    return f"_piece-{index:05d}-"


def _piece_tables(path: str, kind: str) -> Iterator[pa.Table]:
    if kind == "parquet":
        file = pq.ParquetFile(path)
        for group in range(file.metadata.num_row_groups):
            yield file.read_row_group(group)
        return
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            yield pa.Table.from_pylist([json.loads(line)])
