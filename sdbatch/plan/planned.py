"""A manifest file planned a chunk at a time: read, normalized, checked, fingerprinted and written in shard order."""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sdbatch.errors import ManifestError, ObjectNotFound
from sdbatch.manifest.normalize import normalize
from sdbatch.manifest.problems import Notes
from sdbatch.output.job import ManifestDigest
from sdbatch.output.results import read_batches
from sdbatch.plan.shards import PLAN_CHUNK_ROWS, Plan, Planner, Shard
from sdbatch.settings import RowDefaults
from sdbatch.store import Reader, is_remote_store

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
    notes: Notes = field(default_factory=Notes)  # warnings about what was accepted, to show once


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
    ids = _IdCheck(workdir) if "id" in file.schema_arrow.names and total > chunk_rows else None
    sink = _ChunkSink(shard_size, check, ids, os.path.join(workdir, "planned.parquet") if write else None)
    notes = Notes()
    try:
        with _seed_workers(total > chunk_rows) as workers:
            for first_row, chunk in _chunks(file, chunk_rows, uri):
                sink.add(normalize(chunk, defaults, first_row=first_row, total_rows=total, seed_workers=workers,
                                   notes=notes), first_row)
    finally:
        sink.close()
    if ids is not None:
        ids.check(file)
    return PlannedManifest(sink.planner.plan(), sink.digest.hexdigest(), source, sink.path, notes)


class _ChunkSink:
    """Where each normalized chunk goes: the caller's check, the id check, the planner, then the fingerprint
    and the planned file on a thread of their own (Arrow and hashlib let go of the GIL there), so they
    overlap the next chunk's normalizing; one chunk at most waits for them."""

    def __init__(self, shard_size: int, check: Callable[[pa.Table, int], None] | None, ids: _IdCheck | None,
                 path: str | None) -> None:
        self.planner, self.digest = Planner(shard_size), ManifestDigest()
        self.check, self.ids, self.path = check, ids, path
        self.writer: pq.ParquetWriter | None = None
        self.output = ThreadPoolExecutor(1, thread_name_prefix="sdbatch-plan-output")
        self.pending: Future | None = None

    def add(self, normalized: pa.Table, first_row: int) -> None:
        if self.check is not None:
            self.check(normalized, first_row)
        if self.ids is not None:
            self.ids.add(normalized.column("id"))
        planned = self.planner.add(normalized)
        self.wait()
        self.pending = self.output.submit(self._write, normalized, planned)

    def _write(self, normalized: pa.Table, planned: pa.Table) -> None:
        self.digest.add(normalized)
        if self.path is None:
            return
        if self.writer is None:
            # Dictionaries only where values repeat: on prompts, ids and seeds they cost time and save nothing.
            repeating = [name for name in planned.column_names if name in DICTIONARY_COLUMNS]
            self.writer = pq.ParquetWriter(self.path, planned.schema, use_dictionary=repeating)
        self.writer.write_table(planned.cast(self.writer.schema), row_group_size=ROW_GROUP_ROWS)

    def wait(self) -> None:
        if self.pending is not None:
            self.pending.result()  # a failure to write surfaces here
            self.pending = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.output.shutdown()
            if self.writer is not None:
                self.writer.close()
            if self.ids is not None:
                self.ids.close()


@contextlib.contextmanager
def _seed_workers(large: bool) -> Iterator[Executor | None]:
    """Processes that derive seeds (a SHA-256 per row, in Python) beside the planning, for large manifests
    on machines with more than one CPU. Spawned, not forked: this process already runs pyarrow's threads."""
    cpus = os.cpu_count() or 1
    if not large or cpus < 2:
        yield None
        return
    with ProcessPoolExecutor(min(cpus, MAX_SEED_WORKERS), mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool if _starts(pool) else None


def _starts(pool: ProcessPoolExecutor) -> bool:
    # A spawned process imports this one's __main__ again, which fails for a script read from stdin: the
    # seeds are then derived here, one block after another.
    try:
        pool.submit(os.getpid).result()
        return True
    except BrokenProcessPool:
        return False


def _local_copy(uri: str, workdir: str, s3: Any) -> str:
    if not is_remote_store(uri):
        if not os.path.exists(uri):
            raise ManifestError(f"manifest {uri} does not exist; check the path")
        if os.path.isdir(uri):
            raise ManifestError(f"manifest {uri} is a directory; pass a single .parquet file")
        return uri
    store, key = Reader(s3).store_of(uri)
    path = os.path.join(workdir, "source.parquet")
    try:
        store.download(key, path)  # streamed: the manifest may be larger than memory
    except ObjectNotFound as exc:
        raise ManifestError(f"manifest {uri} does not exist; check the key") from exc
    return path


def _open_parquet(path: str, uri: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(f"manifest {uri} is not a Parquet file ({exc}); "
                            "write it with pyarrow or pandas.DataFrame.to_parquet, "
                            "or build one with `sdbatch manifest new`") from exc


def _chunks(file: pq.ParquetFile, chunk_rows: int, uri: str) -> Iterator[tuple[int, pa.Table]]:
    """(first row, table) of exactly chunk_rows rows (the last may be shorter), whatever the file's row
    groups: the plan must not depend on how the manifest was written."""
    pending: list[pa.RecordBatch] = []
    held = first_row = 0
    for batch in _readable_batches(file, min(chunk_rows, 1 << 16), uri):
        while batch.num_rows:
            take = min(batch.num_rows, chunk_rows - held)
            pending.append(batch.slice(0, take))
            batch, held = batch.slice(take), held + take
            if held == chunk_rows:
                yield first_row, pa.Table.from_batches(pending)
                pending, held, first_row = [], 0, first_row + chunk_rows
    if held:
        yield first_row, pa.Table.from_batches(pending)


def _readable_batches(file: pq.ParquetFile, size: int, uri: str) -> Iterator[pa.RecordBatch]:
    """The file's batches; a page that cannot be decoded (a damaged file whose footer is whole) is a manifest
    error that says where, not a reader's traceback."""
    batches = read_batches(file, size)
    row = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            reason = " ".join(str(exc).split())
            raise ManifestError(f"manifest {uri} cannot be read after row {row} ({reason}); the file is damaged: "
                                "write it again (or copy it again if it was transferred)") from exc
        row += batch.num_rows
        yield batch


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

    def close(self) -> None:
        for f in self.files:
            f.close()

    def check(self, file: pq.ParquetFile) -> None:
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
    for group in range(file.metadata.num_row_groups):
        ids = file.read_row_group(group, columns=["id"]).column(0).cast(pa.string())  # as normalize makes them
        values = ids.to_pylist()
        for offset in np.flatnonzero(np.isin(_hashes(ids), list(suspects))):
            value = values[offset]
            if value in first:
                raise ManifestError(f"manifest has a problem: column 'id', row id {value!r} (row {row + offset}): "
                                    f"duplicates row {first[value]}; ids must be unique")
            first[value] = row + int(offset)
        row += len(ids)


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
