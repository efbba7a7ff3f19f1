"""Shard commits: per-shard metadata, create-once markers, and the marker index that resume and status read."""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdbatch.errors import ObjectNotFound, StoreError
from sdbatch.store.base import PutResult, Store

log = logging.getLogger(__name__)
MARKER_PREFIX = "_committed/"
# Compacted copies of markers: a cache that spares a GET per marker; the markers stay the truth.
INDEX_PREFIX = "_index/committed/"
READ_THREADS = 16  # parallel GETs when reading many markers or metadata files
# An index made of more parts than this is merged into one, so a reader's GETs stay few.
MAX_INDEX_PARTS = 16

# The per-shard metadata files: one row per manifest row of the shard, ok or failed.
RESULT_SCHEMA = pa.schema([
    ("id", pa.string()), ("shard", pa.string()), ("attempt", pa.string()),
    ("image", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("seed", pa.int64()), ("width", pa.int64()), ("height", pa.int64()),
    ("steps", pa.int64()), ("guidance_scale", pa.float64()), ("scheduler", pa.string()),
    ("scheduler_class", pa.string()),
    ("model", pa.string()), ("model_hash", pa.string()), ("vae_hash", pa.string()), ("device", pa.string()),
    ("dtype", pa.string()), ("versions", pa.string()), ("render_seconds", pa.float64()),
    ("batch_size", pa.int64()), ("actor", pa.string()), ("adopted", pa.bool_()),
    ("finished_at", pa.string()),
    # Provenance of per-row variants: what the file/image actually was, not just where it was.
    ("loras_used", pa.list_(pa.struct([("path", pa.string()), ("sha256", pa.string()), ("weight", pa.float64())]))),
    ("controlnets_used", pa.list_(pa.struct([("model", pa.string()), ("model_hash", pa.string()),
                                             ("image", pa.string()), ("image_sha256", pa.string()),
                                             ("scale", pa.float64())]))),
    ("embeddings_used", pa.list_(pa.struct([("name", pa.string()), ("sha256", pa.string())]))),
    ("init_image_sha256", pa.string()), ("mask_image_sha256", pa.string()),
    # The model's family (sdbatch.family) and what it resolved: the T5 length used, the true CFG scale.
    ("family", pa.string()), ("max_sequence_length", pa.int64()), ("true_cfg_scale", pa.float64()),
    # The loaded model's [render] options: where its weights waited, their quantization, the step cache.
    ("offload", pa.string()), ("quantize", pa.string()), ("step_cache", pa.string()),
])

MARKER_SCHEMA = pa.schema([
    ("shard", pa.string()), ("attempt", pa.string()), ("metadata", pa.string()),
    ("rows", pa.int64()), ("ok", pa.int64()), ("failed", pa.int64()), ("committed_at", pa.string()),
])


def metadata_folder(shard_id: str) -> str:
    # A folder per shard: finding a shard's attempts lists that folder alone, whatever the run's size.
    return f"metadata/{shard_id}/"


def metadata_key(shard_id: str, attempt: str) -> str:
    return f"{metadata_folder(shard_id)}{attempt}.parquet"


def marker_key(shard_id: str) -> str:
    return f"{MARKER_PREFIX}{shard_id}.json"


def commit_shard(store: Store, shard_id: str, attempt: str, rows: list[dict]) -> dict:
    """Write the shard's metadata, then its create-once marker; returns the marker that stands (another
    attempt's if that one committed first, in which case our metadata is deleted)."""
    meta_key = metadata_key(shard_id, attempt)
    store.put(meta_key, parquet_bytes(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)))
    marker = commit_marker(store, shard_id, attempt, meta_key, rows)
    if marker["metadata"] != meta_key:
        store.delete(meta_key)  # the other attempt's metadata is the shard's; leave no orphan
    return marker


def commit_marker(store: Store, shard_id: str, attempt: str, meta_key: str, rows: list[dict]) -> dict:
    """Create the shard's marker naming meta_key (ours, or one an earlier attempt left uncommitted);
    returns the marker that stands: ours, or another attempt's that committed first."""
    ok = sum(1 for r in rows if r["status"] == "ok")
    marker = {"shard": shard_id, "attempt": attempt, "metadata": meta_key, "rows": len(rows),
              "ok": ok, "failed": len(rows) - ok, "committed_at": _now()}
    if store.put_once(marker_key(shard_id), json_bytes(marker)) is PutResult.CREATED:
        _drop_uncommitted(store, shard_id, meta_key)
        return marker
    return json.loads(store.get(marker_key(shard_id)))


def _drop_uncommitted(store: Store, shard_id: str, committed: str) -> None:
    """Delete the metadata of attempts that died between their metadata and their marker (a killed actor,
    a stopped run): once a marker stands, nothing can commit them any more."""
    for key in store.list(metadata_folder(shard_id)):
        if key != committed:
            store.delete(key)


def uncommitted_metadata(store: Store, shard_id: str) -> dict[str, list[dict]]:
    """Metadata files of a shard that attempts wrote (committed or not), by key: their rows. An attempt
    that dies between its metadata and its marker leaves one; a later attempt can commit it as it is."""
    found = {}
    for key in store.list(metadata_folder(shard_id)):
        try:
            found[key] = read_metadata(store.get(key)).to_pylist()
        except ObjectNotFound:  # deleted since the listing: its attempt lost the commit
            continue
    return found


def read_metadata(blob: bytes) -> pa.Table:
    """A shard's metadata file as RESULT_SCHEMA. The plain Parquet reader costs less per file than the
    datasets one, which counts over a run's many small files; a file of an older schema goes the long way."""
    table = pq.ParquetFile(pa.BufferReader(blob)).read()
    return table if table.schema.equals(RESULT_SCHEMA) else pq.read_table(pa.BufferReader(blob), schema=RESULT_SCHEMA)


def read_markers(store: Store, shards_total: int | None = None, refresh: bool = False) -> pa.Table:
    """Every committed shard's marker (MARKER_SCHEMA), one row per shard. The index answers for the
    markers it holds; only markers committed since its last write are read one by one (and, with
    refresh, indexed for the next reader). An index that holds shards_total markers is complete:
    every shard has its one marker, so nothing is listed."""
    index = _read_index(store)
    if shards_total is not None and index.num_rows >= shards_total:
        return index
    indexed = set(index.column("shard").to_pylist())
    listed = [key[len(MARKER_PREFIX):-len(".json")] for key in store.list(MARKER_PREFIX) if key.endswith(".json")]
    # A marker is created once and never changes, so an indexed one needs no GET.
    missing = [shard for shard in listed if shard not in indexed]
    blobs = get_many(store, [marker_key(shard) for shard in missing])
    fresh = pa.Table.from_pylist([_marker_row(json.loads(blob)) for blob in blobs], schema=MARKER_SCHEMA)
    if not fresh.num_rows:
        return index
    markers = pa.concat_tables([index, fresh])
    if refresh:
        write_index(store, markers)
    return markers


def _marker_row(marker: dict) -> dict:
    return {name: marker.get(name) for name in MARKER_SCHEMA.names}


def _read_index(store: Store) -> pa.Table:
    parts = []
    for key in store.list(INDEX_PREFIX):
        try:
            parts.append(pq.read_table(pa.BufferReader(store.get(key)), schema=MARKER_SCHEMA))
        except ObjectNotFound:  # merged into a newer part since the listing, which the next read finds
            continue
    if not parts:
        return MARKER_SCHEMA.empty_table()
    return _unique_shards(pa.concat_tables(parts))


def _unique_shards(table: pa.Table) -> pa.Table:
    """One row per shard: parts written by two drivers of one run may both hold a marker, always the same one."""
    if table.num_rows == 0:
        return table
    first = table.group_by("shard", use_threads=False).aggregate([("rows", "count")]).column("shard")
    if len(first) == table.num_rows:
        return table
    positions = pc.index_in(first, value_set=table.column("shard"))
    return table.take(positions)


class MarkerIndex:
    """The driver's writer of the marker index: markers of shards committed during this run, written as a
    part every `interval` seconds (and at the end), parts merged once there are too many."""

    def __init__(self, store: Store, interval: float) -> None:
        self.store, self.interval = store, interval
        self.pending: list[dict] = []
        self.last_write = time.monotonic()

    def add(self, marker: dict | None) -> None:
        if marker is not None:
            self.pending.append(_marker_row(marker))
        if time.monotonic() - self.last_write >= self.interval:
            self.write()

    def write(self) -> None:
        """Write the markers added since the last write as one part, then merge the parts if they are many.
        A store that fails here fails no shard: the markers are the truth, and the next write tries again."""
        self.last_write = time.monotonic()
        if not self.pending:
            return
        try:
            self.store.put(_part_key(), parquet_bytes(pa.Table.from_pylist(self.pending, schema=MARKER_SCHEMA)))
            self.pending = []
            keys = self.store.list(INDEX_PREFIX)
            if len(keys) > MAX_INDEX_PARTS:
                merge_index(self.store, keys)
        except StoreError as exc:
            log.warning("marker index not written (%s); resume and status read those markers one by one", exc)


def write_index(store: Store, markers: pa.Table) -> None:
    """Replace the index by one part holding these markers (a resume's full read, for the next reader)."""
    merge_index(store, store.list(INDEX_PREFIX), markers)


def merge_index(store: Store, keys: list[str], markers: pa.Table | None = None) -> None:
    """One part in place of `keys`: written before they are deleted, so a reader always finds each marker
    in some part or in _committed/."""
    table = _read_index(store) if markers is None else markers
    store.put(_part_key(), parquet_bytes(_unique_shards(table)))
    for key in keys:
        store.delete(key)


def _part_key() -> str:
    # Time first: parts list in the order they were written; the suffix keeps two drivers' parts apart.
    return f"{INDEX_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"


def get_many(store: Store, keys: list[str]) -> list[bytes]:
    # Tens of thousands of small objects one after another: their round trips add up to a long wait on S3.
    if len(keys) < 2:
        return [store.get(key) for key in keys]
    with ThreadPoolExecutor(READ_THREADS) as pool:
        return list(pool.map(store.get, keys))


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def json_bytes(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
