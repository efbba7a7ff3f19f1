"""A run's results with their scores: read_results (a table), scan_results (batches), open_results, compact."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from sdbatch.errors import ObjectNotFound, UsageError
from sdbatch.output.commits import RESULT_SCHEMA, get_many, json_bytes, read_markers, read_metadata
from sdbatch.output.job import JOB_KEY, MANIFEST_KEY
from sdbatch.output.scores import ScoreJoin
from sdbatch.output.where import where_expression
from sdbatch.store.base import Store

COMPACTED_KEY = "_compacted.json"
RESULTS_PREFIX = "results/"
# Manifest rows joined at a time: enough for Arrow to work in bulk, small beside any machine's memory.
BATCH_ROWS = 1 << 16
# Rows per compacted file: a few files for a million rows, each a comfortable unit for a reader's task.
PART_ROWS = 1 << 18


def read_batches(file: pq.ParquetFile, size: int) -> Iterator[pa.RecordBatch]:
    """The file's rows in batches, a reader per row group: one reader over the whole file keeps memory it
    has decoded, which grows with the rows read."""
    for group in range(file.metadata.num_row_groups):
        yield from file.iter_batches(batch_size=size, row_groups=[group])


def compact(store: Store, also: Callable[[pa.Table], None] | None = None) -> dict[str, Any]:
    """Write results/part-*.parquet (every manifest column joined with its result row, in the planned order)
    and then _compacted.json naming them; a finished run only. `also` sees each joined batch on its way (another
    file written in the same pass)."""
    job = json.loads(store.get(JOB_KEY))
    shards_total = job["manifest"]["shards"]
    markers = read_markers(store, shards_total)
    if markers.num_rows < shards_total:
        raise UsageError(f"{store.uri} is not finished ({markers.num_rows} of {shards_total} shards committed); "
                         "rerun the same submit to finish it, then compact")
    parts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sdbatch-compact-") as tmp:
        writer = _PartWriter(store, tmp, parts)
        for batch in _joined_batches(store, markers):
            writer.add(batch)
            if also is not None:
                also(batch)
        writer.close()
    doc = {"run_fingerprint": job["run_fingerprint"], "rows": job["manifest"]["rows"], "parts": parts}
    store.put(COMPACTED_KEY, json_bytes(doc))
    return doc


def scan_results(output: str | Store, columns: list[str] | None = None, s3: Any = None,
                 where: str | None = None) -> Iterator[pa.Table]:
    """read_results' rows a batch at a time, in the same order, with bounded memory: from the compacted
    files, or (a run not compacted yet) the manifest copy joined with the committed shards' metadata. `where`:
    a SQL WHERE clause over the columns (output/where.py); only the rows it selects."""
    store = _open(output, s3)
    if store.exists(COMPACTED_KEY):
        batches = _compacted_batches(store, json.loads(store.get(COMPACTED_KEY))["parts"])
    elif store.exists(MANIFEST_KEY):
        batches = _joined_batches(store, read_markers(store))
    else:
        raise FileNotFoundError(f"{store.uri} holds no sdbatch run (no {MANIFEST_KEY})")
    condition = None
    for batch in batches:
        if where is not None:
            if condition is None:  # every batch has the same columns
                condition = where_expression(where, batch.schema)
            batch = batch.filter(condition)
        yield batch if columns is None else batch.select(columns)


def _compacted_batches(store: Store, keys: list[str]) -> Iterator[pa.Table]:
    """The compacted parts in order, each downloaded through the store (its client retries what S3 throws at
    it; pyarrow's own S3 client gives up on a reset connection) and read a row group at a time."""
    with tempfile.TemporaryDirectory(prefix="sdbatch-results-") as tmp:
        path = os.path.join(tmp, "part.parquet")
        for key in keys:
            store.download(key, path)
            for batch in read_batches(pq.ParquetFile(path), BATCH_ROWS):
                yield pa.Table.from_batches([batch])


def scan_shards(store: Store, shards: list[str]) -> Iterator[pa.Table]:
    """The joined rows (manifest, results, scores) of these committed shards only, in the planned order."""
    markers = read_markers(store)
    yield from _joined_batches(store, markers.filter(pc.is_in(markers.column("shard"), pa.array(shards, pa.string()))))


def _joined_batches(store: Store, markers: pa.Table) -> Iterator[pa.Table]:
    """One pass over the manifest copy in batches, each joined with its committed shards' results; a
    shard's metadata is read when its first row comes and dropped after its last."""
    metadata = dict(zip(markers.column("shard").to_pylist(), markers.column("metadata").to_pylist()))
    left = dict(zip(markers.column("shard").to_pylist(), markers.column("rows").to_pylist()))
    held: dict[str, pa.Table] = {}
    scores = ScoreJoin(store)
    with tempfile.TemporaryDirectory(prefix="sdbatch-results-") as tmp:
        path = os.path.join(tmp, MANIFEST_KEY)
        store.download(MANIFEST_KEY, path)  # streamed: the manifest may be larger than memory
        for batch in read_batches(pq.ParquetFile(path), BATCH_ROWS):
            manifest = pa.Table.from_batches([batch])
            # Against this batch's own committed shards: a set of every marker would be hashed anew per batch.
            here = [shard for shard in pc.unique(manifest.column("shard")).to_pylist() if shard in metadata]
            committed = manifest.filter(pc.is_in(manifest.column("shard"), value_set=pa.array(here, pa.string())))
            if committed.num_rows:
                yield _joined(store, committed, metadata, left, held, scores)


def _joined(store: Store, manifest: pa.Table, metadata: dict[str, str], left: dict[str, int],
            held: dict[str, pa.Table], scores: ScoreJoin) -> pa.Table:
    shards = pc.unique(manifest.column("shard")).to_pylist()
    wanted = [shard for shard in shards if shard not in held]
    tables = [read_metadata(blob) for blob in get_many(store, [metadata[shard] for shard in wanted])]
    held.update(zip(wanted, scores.add(wanted, tables)))
    results = pa.concat_tables([held[shard] for shard in shards])
    counts = manifest.group_by("shard").aggregate([("id", "count")]).to_pylist()
    for count in counts:
        left[count["shard"]] -= count["id_count"]
        if left[count["shard"]] <= 0:
            del held[count["shard"]]
    return join_results(manifest, results)


def join_results(manifest: pa.Table, results: pa.Table) -> pa.Table:
    """Manifest rows that have a result, in manifest order, with the result's columns; where both have a
    column the result's value wins (it is what was used, e.g. the model's native size where the manifest
    had none)."""
    positions = pc.index_in(manifest.column("id"), value_set=results.column("id"))
    keep = pc.is_valid(positions)
    picked_manifest = manifest.filter(keep)
    picked_results = results.take(positions.filter(keep))
    columns = {name: picked_manifest.column(name) for name in manifest.column_names}
    columns.update({name: picked_results.column(name) for name in results.column_names})
    order = list(manifest.column_names) + [n for n in results.column_names if n not in manifest.column_names]
    return pa.table({name: columns[name] for name in order})


class _PartWriter:
    """Joined batches into parts of about PART_ROWS rows, each uploaded once complete."""

    def __init__(self, store: Store, tmp: str, keys: list[str]) -> None:
        self.store, self.tmp, self.keys = store, tmp, keys
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if self.writer is None:
            self.writer, self.rows = pq.ParquetWriter(self._path(), table.schema), 0
        self.writer.write_table(table)
        self.rows += table.num_rows
        if self.rows >= PART_ROWS:
            self.close()

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        key = f"{RESULTS_PREFIX}part-{len(self.keys):05d}.parquet"
        self.store.upload(self._path(), key)
        self.keys.append(key)

    def _path(self) -> str:
        return os.path.join(self.tmp, "part.parquet")


def read_results(output: str | Store, s3: Any = None, where: str | None = None) -> pa.Table:
    """Every manifest column plus image, status, error, provenance and the score columns of every step the output
    has (null where a shard or image has no score yet), one row per committed manifest id, in the planned order
    (by shard); with `where` (a SQL WHERE clause, e.g. "clip_score > 0.25 and label = 'cat'") only the rows it
    selects. For runs too big for memory: open_results or scan_results."""
    batches = list(scan_results(output, s3=s3, where=where))
    if batches:
        return pa.concat_tables(batches)
    store = _open(output, s3)
    manifest = pq.ParquetFile(pa.BufferReader(store.get(MANIFEST_KEY))).schema_arrow
    empty = join_results(manifest.empty_table(), RESULT_SCHEMA.empty_table())
    if where is not None:
        where_expression(where, empty.schema)  # a clause that names no column of the run is an error, rows or not
    return empty


def open_results(output: str | Store, s3: Any = None, where: str | None = None) -> ds.Dataset:
    """The results of a run as a pyarrow Dataset, read lazily (filters, projections, batches). A compacted
    run: every manifest column with its result and scores, in the planned order. Otherwise: the committed shards'
    metadata (the results columns alone); `sdbatch compact` adds the manifest's and the scores. `where`: a SQL
    WHERE clause over the dataset's columns, applied as its filter."""
    dataset = _results_dataset(_open(output, s3))
    return dataset if where is None else dataset.filter(where_expression(where, dataset.schema))


def _results_dataset(store: Store) -> ds.Dataset:
    filesystem, root = store.arrow_filesystem()
    try:
        keys = json.loads(store.get(COMPACTED_KEY))["parts"]
        return ds.dataset([f"{root}/{key}" for key in keys], format="parquet", filesystem=filesystem)
    except ObjectNotFound:
        pass
    if not store.exists(JOB_KEY):
        raise FileNotFoundError(f"{store.uri} holds no sdbatch run (no {JOB_KEY})")
    keys = read_markers(store).column("metadata").to_pylist()
    return ds.dataset([f"{root}/{key}" for key in keys], schema=RESULT_SCHEMA, format="parquet",
                      filesystem=filesystem)


def _open(output: str | Store, s3: Any) -> Store:
    from sdbatch.store import open_store

    return output if isinstance(output, Store) else open_store(str(output), s3)
