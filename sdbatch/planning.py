"""A manifest file planned a chunk at a time: read, normalized, checked, fingerprinted and written in shard order."""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sdbatch.errors import ManifestError, ObjectNotFound
from sdbatch.manifest import normalize
from sdbatch.output import ManifestDigest
from sdbatch.plan import PLAN_CHUNK_ROWS, Plan, Planner, Shard
from sdbatch.settings import RowDefaults

# Rows per row group of the planned file: a shard's rows are read back by row group, so small groups
# keep each read small; large enough that the file's footer stays small at a hundred million rows.
ROW_GROUP_ROWS = 1 << 13
# Row groups the driver keeps decoded: shards of one variant follow each other through a group.
CACHED_GROUPS = 32
# Buckets of id hashes spilled to disk: the duplicate check holds one bucket at a time.
ID_BUCKETS = 16
# Processes deriving seeds for a large manifest: beyond this, the rest of the planning is the bottleneck.
MAX_SEED_WORKERS = 8
# Columns of the planned file whose values repeat (variant settings, shard ids): dictionary-encoded.
DICTIONARY_COLUMNS = ("negative_prompt", "steps", "guidance_scale", "width", "height", "scheduler", "model", "vae",
                      "shard")


@dataclass(frozen=True)
class PlannedManifest:
    plan: Plan
    fingerprint: str  # of the normalized manifest (ManifestDigest)
    source: str  # the manifest file as read: the user's path, or a local copy of an s3:// one
    planned: str | None  # the normalized manifest in shard order, with its `shard` column


def plan_manifest(uri: str, defaults: RowDefaults, shard_size: int, workdir: str, s3: Any = None,
                  check: Callable[[pa.Table, int], None] | None = None, write: bool = True,
                  chunk_rows: int = PLAN_CHUNK_ROWS) -> PlannedManifest:
    """Plan a manifest (local or s3://) holding one chunk of it at a time. `check(chunk, first_row)` runs on
    each normalized chunk; with `write`, the planned rows go to a Parquet file in workdir."""
    source = _local_copy(uri, workdir, s3)
    file = _open_parquet(source, uri)
    total = file.metadata.num_rows
    if total == 0:
        raise ManifestError(f"manifest {uri} has no rows; add at least one prompt")
    planner, digest = Planner(shard_size), ManifestDigest()
    ids = _IdCheck(workdir) if "id" in file.schema_arrow.names and total > chunk_rows else None
    planned_path = os.path.join(workdir, "planned.parquet") if write else None
    writer = None
    with _seed_workers(total > chunk_rows) as workers:
        for first_row, chunk in _chunks(file, chunk_rows):
            normalized = normalize(chunk, defaults, first_row=first_row, total_rows=total, seed_workers=workers)
            writer = _plan_chunk(normalized, first_row, planner, digest, ids, check, planned_path, writer)
    if writer is not None:
        writer.close()
    if ids is not None:
        ids.check(file)
    return PlannedManifest(planner.plan(), digest.hexdigest(), source, planned_path)


def _plan_chunk(normalized: pa.Table, first_row: int, planner: Planner, digest: ManifestDigest,
                ids: _IdCheck | None, check, planned_path: str | None, writer: pq.ParquetWriter | None):
    if check is not None:
        check(normalized, first_row)
    if ids is not None:
        ids.add(normalized.column("id"))
    digest.add(normalized)
    planned = planner.add(normalized)
    if planned_path is None:
        return None
    if writer is None:
        # Dictionaries only where values repeat: on prompts, ids and seeds they cost time and save nothing.
        repeating = [name for name in planned.column_names if name in DICTIONARY_COLUMNS]
        writer = pq.ParquetWriter(planned_path, planned.schema, use_dictionary=repeating)
    writer.write_table(planned.cast(writer.schema), row_group_size=ROW_GROUP_ROWS)
    return writer


@contextlib.contextmanager
def _seed_workers(large: bool) -> Iterator[Executor | None]:
    """Processes that derive seeds (a SHA-256 per row, in Python) beside the planning, for large manifests
    on machines with more than one CPU. Spawned, not forked: this process already runs pyarrow's threads."""
    cpus = os.cpu_count() or 1
    if not large or cpus < 2:
        yield None
        return
    with ProcessPoolExecutor(min(cpus, MAX_SEED_WORKERS), mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _local_copy(uri: str, workdir: str, s3: Any) -> str:
    if not uri.startswith("s3://"):
        if not os.path.exists(uri):
            raise ManifestError(f"manifest {uri} does not exist; check the path")
        if os.path.isdir(uri):
            raise ManifestError(f"manifest {uri} is a directory; pass a single .parquet file")
        return uri
    from sdbatch.store import open_store

    parent, _, name = uri.rpartition("/")
    path = os.path.join(workdir, "source.parquet")
    try:
        open_store(parent, s3).download(name, path)  # streamed: the manifest may be larger than memory
    except ObjectNotFound as exc:
        raise ManifestError(f"manifest {uri} does not exist; check the key") from exc
    return path


def _open_parquet(path: str, uri: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"manifest {uri} is not a Parquet file ({exc}); "
                            "write it with pyarrow or pandas.DataFrame.to_parquet, "
                            "or build one with `sdbatch manifest new`") from exc


def _chunks(file: pq.ParquetFile, chunk_rows: int) -> Iterator[tuple[int, pa.Table]]:
    """(first row, table) of exactly chunk_rows rows (the last may be shorter), whatever the file's row
    groups: the plan must not depend on how the manifest was written."""
    pending: list[pa.RecordBatch] = []
    held = first_row = 0
    for batch in file.iter_batches(batch_size=min(chunk_rows, 1 << 16)):
        while batch.num_rows:
            take = min(batch.num_rows, chunk_rows - held)
            pending.append(batch.slice(0, take))
            batch, held = batch.slice(take), held + take
            if held == chunk_rows:
                yield first_row, pa.Table.from_batches(pending)
                pending, held, first_row = [], 0, first_row + chunk_rows
    if held:
        yield first_row, pa.Table.from_batches(pending)


class _IdCheck:
    """Ids unique across chunks (normalize checks each chunk): 64-bit hashes spilled to disk in buckets,
    each bucket sorted on its own; a hash seen twice is then settled on the ids themselves."""

    def __init__(self, workdir: str) -> None:
        self.paths = [os.path.join(workdir, f"ids-{n:02d}.bin") for n in range(ID_BUCKETS)]
        self.files = [open(path, "wb") for path in self.paths]

    def add(self, ids: pa.ChunkedArray) -> None:
        hashes = _hashes(ids)
        buckets = (hashes.view(np.uint64) >> np.uint64(60)).astype(np.int64) % ID_BUCKETS
        for bucket, f in enumerate(self.files):
            hashes[buckets == bucket].tofile(f)

    def check(self, file: pq.ParquetFile) -> None:
        for f in self.files:
            f.close()
        seen_twice: set[int] = set()
        for path in self.paths:
            hashes = np.sort(np.fromfile(path, dtype=np.int64))
            seen_twice.update(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
            os.unlink(path)
        if seen_twice:
            _raise_duplicates(file, seen_twice)


def _hashes(ids: pa.ChunkedArray) -> np.ndarray:
    return np.fromiter((hash(value) for value in ids.to_pylist()), dtype=np.int64, count=len(ids))


def _raise_duplicates(file: pq.ParquetFile, suspects: set[int]) -> None:
    first: dict[str, int] = {}
    row = 0
    for batch in file.iter_batches(batch_size=1 << 16, columns=["id"]):
        values = batch.column(0).to_pylist()
        for offset in np.flatnonzero(np.isin(_hashes(pa.chunked_array([batch.column(0)])), list(suspects))):
            value = str(values[offset])
            if value in first:
                raise ManifestError(f"manifest has a problem: column 'id', row id {value!r} (row {row + offset}): "
                                    f"duplicates row {first[value]}; ids must be unique")
            first[value] = row + int(offset)
        row += batch.num_rows


class PlannedRows:
    """A shard's rows read back from the planned file when it is dispatched: a row range, from a few
    decoded row groups kept at hand, so the driver never holds the manifest."""

    def __init__(self, path: str) -> None:
        self.file = pq.ParquetFile(path)
        meta = self.file.metadata
        self.bounds = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        self.columns = [name for name in self.file.schema_arrow.names if name != "shard"]
        self.cache: collections.OrderedDict[int, pa.Table] = collections.OrderedDict()

    def rows(self, shard: Shard) -> list[dict[str, Any]]:
        first = int(np.searchsorted(self.bounds, shard.start, side="right")) - 1
        last = int(np.searchsorted(self.bounds, shard.start + shard.size - 1, side="right")) - 1
        groups = pa.concat_tables([self._group(g) for g in range(first, last + 1)])
        return groups.slice(shard.start - int(self.bounds[first]), shard.size).to_pylist()

    def _group(self, group: int) -> pa.Table:
        if group in self.cache:
            self.cache.move_to_end(group)
        else:
            self.cache[group] = self.file.read_row_group(group, columns=self.columns)
            if len(self.cache) > CACHED_GROUPS:
                self.cache.popitem(last=False)
        return self.cache[group]
