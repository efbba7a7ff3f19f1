"""A run's results with their scores: read_results, scan_results (batches), open_results, compact (in parts)."""

from __future__ import annotations

import contextlib
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
from sdbatch.store.ranged import StoreFile

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
    and then _compacted.json naming them; a finished run only. One part at a time, so memory holds one part's
    batches at most (engine/compaction.py runs the same parts as Ray tasks). `also` sees each joined batch on
    its way (another file written in the same pass)."""
    job, markers = finished_run(store)
    scores = ScoreJoin(store)
    keys = [compact_part(store, groups, index, markers, scores, also)
            for index, groups in enumerate(compaction_parts(store))]
    return write_compacted(store, job, keys)


def finished_run(store: Store) -> tuple[dict, pa.Table]:
    """The run's job.json and its markers; UsageError unless every shard is committed."""
    job = json.loads(store.get(JOB_KEY))
    shards_total = job["manifest"]["shards"]
    markers = read_markers(store, shards_total)
    if markers.num_rows < shards_total:
        raise UsageError(f"{store.uri} is not finished ({markers.num_rows} of {shards_total} shards committed); "
                         "rerun the same submit to finish it, then compact")
    return job, markers


def write_compacted(store: Store, job: dict, keys: list[str | None]) -> dict[str, Any]:
    """_compacted.json naming the parts written, in order; only once every part is."""
    doc = {"run_fingerprint": job["run_fingerprint"], "rows": job["manifest"]["rows"],
           "parts": [key for key in keys if key is not None]}
    store.put(COMPACTED_KEY, json_bytes(doc))
    return doc


def compaction_parts(store: Store) -> list[tuple[int, int]]:
    """The manifest copy's row groups cut into ranges [start, stop) of about PART_ROWS rows, in order: the
    units compact_part works on. Only the file's footer is read."""
    with _open_manifest(store) as file:
        sizes = [file.metadata.row_group(group).num_rows for group in range(file.metadata.num_row_groups)]
    parts, start, rows = [], 0, 0
    for group, size in enumerate(sizes):
        rows += size
        if rows >= PART_ROWS:
            parts.append((start, group + 1))
            start, rows = group + 1, 0
    if start < len(sizes):
        parts.append((start, len(sizes)))
    return parts


def compact_part(store: Store, groups: tuple[int, int], index: int, markers: pa.Table | None = None,
                 scores: ScoreJoin | None = None, also: Callable[[pa.Table], None] | None = None) -> str | None:
    """Join the rows of committed shards in the manifest copy's row groups [start, stop) with their results
    and scores, write them as results/part-{index:05d}.parquet and return its key (None, and no file, when no
    row there is committed). Reads those row groups alone, not the whole file. markers and scores: the
    run's, when the caller has them already (each costs listings of the store). `also`: as compact's."""
    markers = read_markers(store) if markers is None else markers
    scores = ScoreJoin(store) if scores is None else scores
    key, writer = f"{RESULTS_PREFIX}part-{index:05d}.parquet", None
    with tempfile.TemporaryDirectory(prefix="sdbatch-compact-") as tmp, _open_manifest(store) as file:
        # The markers of this range's shards only: at a hundred million rows a run has millions of shards,
        # and the join's look-ups are made of the markers it is given, in every part.
        shards = pc.unique(file.read_row_groups(list(range(*groups)), columns=["shard"]).column("shard"))
        markers = markers.filter(pc.is_in(markers.column("shard"), value_set=shards.cast(pa.string())))
        path = os.path.join(tmp, "part.parquet")
        try:
            for table in _joined_groups(store, file, range(*groups), markers, scores):
                writer = writer or pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
                if also is not None:
                    also(table)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            return None
        store.upload(path, key)
    return key


@contextlib.contextmanager
def _open_manifest(store: Store) -> Iterator[pq.ParquetFile]:
    """The manifest copy read by range through the store (its retries, not pyarrow's S3 client, which gives up
    on a reset connection): a part costs its footer's and its row groups' bytes, not the whole file's."""
    try:
        source = StoreFile(store, MANIFEST_KEY)
    except ObjectNotFound as exc:
        raise ObjectNotFound(f"{store.uri} holds no {MANIFEST_KEY}") from exc
    with source:
        yield pq.ParquetFile(source)


def scan_results(output: str | Store, columns: list[str] | None = None, s3: Any = None,
                 where: str | None = None) -> Iterator[pa.Table]:
    """read_results' rows a batch at a time, in the same order, with bounded memory: from the compacted
    files, or (a run not compacted yet) the manifest copy joined with the committed shards' metadata. `where`:
    a SQL WHERE clause over the columns (output/where.py); only the rows it selects."""
    store = _open(output, s3)
    if store.exists(COMPACTED_KEY):
        batches = compacted_batches(store, json.loads(store.get(COMPACTED_KEY))["parts"])
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


def compacted_batches(store: Store, keys: list[str]) -> Iterator[pa.Table]:
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
    """One pass over the manifest copy in batches, each joined with its committed shards' results."""
    with tempfile.TemporaryDirectory(prefix="sdbatch-results-") as tmp:
        path = os.path.join(tmp, MANIFEST_KEY)
        store.download(MANIFEST_KEY, path)  # streamed: the manifest may be larger than memory
        file = pq.ParquetFile(path)
        yield from _joined_groups(store, file, range(file.metadata.num_row_groups), markers, ScoreJoin(store))


def _joined_groups(store: Store, file: pq.ParquetFile, groups: range, markers: pa.Table,
                   scores: ScoreJoin) -> Iterator[pa.Table]:
    """These row groups of the manifest copy in batches, each joined with its committed shards' results; a
    shard's metadata is read when its first row comes and dropped after its last (or at the end: a shard
    the range cuts is read again by the range that holds its other rows)."""
    metadata = dict(zip(markers.column("shard").to_pylist(), markers.column("metadata").to_pylist()))
    left = dict(zip(markers.column("shard").to_pylist(), markers.column("rows").to_pylist()))
    held: dict[str, pa.Table] = {}
    for group in groups:
        # A reader per row group: one reader over many keeps memory it has decoded (read_batches).
        for batch in file.iter_batches(batch_size=BATCH_ROWS, row_groups=[group]):
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
