"""The rows an export takes from a run (ok rows, filtered, the columns a dataset keeps) and their images."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.errors import ObjectNotFound, UsageError
from sdbatch.output.job import JOB_KEY, MANIFEST_KEY, run_layout
from sdbatch.output.layouts.layout import FoundImage, Layout
from sdbatch.output.results import compacted_batches, scan_results
from sdbatch.store.base import Store

# How an attempt ran, not what its image is; status and error are the same for every exported row.
OPERATIONAL = ("status", "error", "attempt", "actor", "adopted", "finished_at", "render_seconds", "batch_size",
               "device", "versions")
# The result's `image` (where the image lies in the run's layout) under another name: in a dataset, `image` is
# the image itself.
IMAGE_REF = "image_ref"


@dataclass(frozen=True)
class Window:
    """Kept rows [start, stop) of an export (numbered over the whole export, in the planned order), read from
    these compacted parts, each with the number of kept rows before it: one Ray task's share of the export."""

    index: int
    start: int
    stop: int
    parts: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Chunk:
    """Rows `index * size` on of the filtered rows, less those whose image is missing, with their images."""

    index: int
    table: pa.Table
    images: list[FoundImage]


class Source:
    """A run's ok rows that pass `where`, in the planned order, as a dataset keeps them; read in passes."""

    def __init__(self, store: Store, where: pc.Expression | None = None,
                 on_chunk: Callable[[pa.Table], None] | None = None, window: Window | None = None) -> None:
        if not store.exists(JOB_KEY) or not store.exists(MANIFEST_KEY):
            raise UsageError(f"{store.uri} holds no sdbatch run (no {JOB_KEY} or {MANIFEST_KEY}); pass the "
                             "output folder or s3:// prefix a run wrote")
        self.store, self.where, self.on_chunk, self.window = store, where, on_chunk, window
        self.job = json.loads(store.get(JOB_KEY))
        self.layout: Layout = run_layout(store)
        self.rows_seen = self.rows_failed = self.rows_filtered = self.images_missing = 0

    def rows(self) -> Iterator[pa.Table]:
        """The kept rows, a results batch at a time, without their images; counts what was left out (of the
        batches read: a window's counts are of its parts)."""
        self.rows_seen = self.rows_failed = self.rows_filtered = 0
        if self.window is not None:
            yield from self._window_rows(self.window)
            return
        for batch in scan_results(self.store):
            kept = self.kept(batch)
            if kept.num_rows:
                yield dataset_columns(kept)

    def kept(self, batch: pa.Table) -> pa.Table:
        """The batch's ok rows that pass `where`, counted."""
        ok = batch.filter(pc.field("status") == "ok")
        kept = self._filtered(ok)
        self.rows_seen += batch.num_rows
        self.rows_failed += batch.num_rows - ok.num_rows
        self.rows_filtered += ok.num_rows - kept.num_rows
        return kept

    def _window_rows(self, window: Window) -> Iterator[pa.Table]:
        for key, before in window.parts:
            for batch in compacted_batches(self.store, [key]):
                kept = self.kept(batch)
                start, stop = max(window.start - before, 0), min(window.stop - before, kept.num_rows)
                if start < stop:
                    yield dataset_columns(kept.slice(start, stop - start))
                before += kept.num_rows
                if before >= window.stop:
                    return

    def count(self) -> int:
        return sum(table.num_rows for table in self.rows())

    def samples(self, size: int, threads: int) -> Iterator[Chunk]:
        """Every run of `size` kept rows (the last may be shorter) with its images; a row whose image is not in
        the store is counted and left out, so chunk `index` always starts at row `index * size`."""
        self.images_missing = 0
        first = 0 if self.window is None else self.window.start // size  # windows start at a chunk's start
        with ImageReader(self.store, self.layout, threads) as reader:
            for index, table in enumerate(rechunk(self.rows(), size), start=first):
                found = reader.fetch(table.column(IMAGE_REF).to_pylist())
                present = [image is not None for image in found]
                if not all(present):
                    self.images_missing += present.count(False)
                    table = table.filter(pa.array(present))
                if self.on_chunk is not None:
                    self.on_chunk(table)
                yield Chunk(index, table, [image for image in found if image is not None])

    def _filtered(self, table: pa.Table) -> pa.Table:
        if self.where is None:
            return table
        with unfiltered(self.where, self.store, table.column_names):
            return table.filter(self.where)


@contextlib.contextmanager
def unfiltered(where: pc.Expression, store: Store, columns: list[str]) -> Iterator[None]:
    """Arrow's refusal of a filter (a column the results lack, a type it cannot compare) as a UsageError."""
    try:
        yield
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, KeyError) as exc:
        # Arrow's first line says what is wrong; the rest lists the schema, said better below.
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"the filter {where} cannot be applied to the results of {store.uri} ({why}); name "
                         f"columns the results have: {', '.join(columns)}") from exc


def results_schema(store: Store) -> pa.Schema:
    """The columns a filter can name: read_results' (manifest, results, scores), from the run's first batch."""
    first = next(scan_results(store), None)
    if first is None:
        raise UsageError(f"{store.uri} has no committed shard yet; export once its run has committed some")
    return first.schema


def dataset_columns(table: pa.Table) -> pa.Table:
    """The columns a dataset keeps: every manifest, label, setting, provenance and score column, the image's
    ref renamed IMAGE_REF."""
    table = table.drop_columns([name for name in OPERATIONAL if name in table.column_names])
    return table.rename_columns([IMAGE_REF if name == "image" else name for name in table.column_names])


def rechunk(tables: Iterator[pa.Table], size: int) -> Iterator[pa.Table]:
    """The tables' rows in tables of exactly `size` rows, the last one shorter."""
    held: list[pa.Table] = []
    count = 0
    for table in tables:
        held.append(table)
        count += table.num_rows
        while count >= size:
            joined = pa.concat_tables(held)
            yield joined.slice(0, size)
            held, count = [joined.slice(size)], count - size
    if count:
        yield pa.concat_tables(held)


def object_key(ref: str) -> str:
    """The object an `image` value names: the layouts' refs are a key, or a tar's key, '#', a member's name."""
    return ref.partition("#")[0]


class ImageReader:
    """Images by ref through the layout's images_in: one read per object (the last tar is kept for its
    next rows, so a tar is read once per shard), a few objects at once."""

    def __init__(self, store: Store, layout: Layout, threads: int) -> None:
        self.store, self.layout = store, layout
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="sdbatch-export-read")
        self.last: tuple[str, dict[str, FoundImage]] = ("", {})

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(cancel_futures=True)

    def fetch(self, refs: list[str]) -> list[FoundImage | None]:
        if not refs:
            return []
        keys = list(dict.fromkeys(object_key(ref) for ref in refs))
        found = {key: images for key, images in (self.last,) if key in keys}
        todo = [key for key in keys if key not in found]
        found.update(zip(todo, self.pool.map(self._read, todo)))
        self.last = (keys[-1], found[keys[-1]])
        images = [found[object_key(ref)].get(ref) for ref in refs]
        # A file whose own name holds '#' (an id with '#' in the files layout) is its own object.
        return [image if image is not None or object_key(ref) == ref else self._read(ref).get(ref)
                for ref, image in zip(refs, images)]

    def _read(self, key: str) -> dict[str, FoundImage]:
        try:
            return {image.ref: image for image in self.layout.images_in(self.store, key)}
        except ObjectNotFound:  # deleted since it was committed: counted as missing
            return {}


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as JSON takes it: NaN and infinities (which JSON has not) as null, lists and structs as they are."""
    return {name: _jsonable(value) for name, value in row.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return json_row(value)
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def json_text(row: dict[str, Any]) -> str:
    # default=str: dates, times and decimals as their text; binary labels as Python writes them.
    return json.dumps(json_row(row), ensure_ascii=False, default=str)
