"""The output protocol: object keys, job.json, create-once shard commits, resume state and read_results()."""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sdbatch.errors import ObjectNotFound, RunMismatch
from sdbatch.spec import JobSpec, fingerprint
from sdbatch.store.base import PutResult, Store
from sdbatch.version import __version__

JOB_KEY = "job.json"
MANIFEST_KEY = "manifest.parquet"
SUCCESS_KEY = "_SUCCESS.json"
MARKER_PREFIX = "_committed/"
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
READ_THREADS = 16  # parallel GETs when reading many markers or metadata files

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
])


def image_key(shard_id: str, row_id: str, image_format: str) -> str:
    return f"images/{shard_id}/{row_id}.{EXTENSIONS[image_format]}"


def metadata_key(shard_id: str, attempt: str) -> str:
    return f"metadata/{shard_id}.{attempt}.parquet"


def marker_key(shard_id: str) -> str:
    return f"{MARKER_PREFIX}{shard_id}.json"


def new_attempt_id() -> str:
    """Unique per render attempt, so two drivers racing on one shard never overwrite each other."""
    return uuid.uuid4().hex[:12]


def table_fingerprint(table: pa.Table) -> str:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue()).hexdigest()


@dataclass(frozen=True)
class RunIdentity:
    """What a resume must match: the normalized manifest and the output-shaping settings."""

    manifest_fingerprint: str
    settings: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return fingerprint({"manifest": self.manifest_fingerprint, "settings": self.settings})


def job_document(spec: JobSpec, identity: RunIdentity, source: str, rows: int, shards: int) -> dict:
    return {
        "sdbatch_version": __version__,
        "run_fingerprint": identity.fingerprint,
        "manifest": {"source": source, "fingerprint": identity.manifest_fingerprint, "rows": rows,
                     "shards": shards},
        "spec": spec.to_dict(),
        "identity": identity.settings,
        "created_at": _now(),
    }


def existing_run(store: Store, job_doc: dict) -> bool:
    """True if the output already holds this run; RunMismatch if it holds another; reads only."""
    try:
        existing = json.loads(store.get(JOB_KEY))
    except ObjectNotFound:
        return False
    if existing.get("run_fingerprint") != job_doc["run_fingerprint"]:
        raise RunMismatch(_mismatch_message(store, existing, job_doc))
    return True


def claim_output(store: Store, job_doc: dict, manifest_with_shards: pa.Table) -> None:
    """Create job.json and the manifest copy, or check that a racing driver created the same run."""
    if store.put_once(JOB_KEY, _json_bytes(job_doc)) is not PutResult.CREATED:
        existing_run(store, job_doc)
    # The manifest's bytes depend on the pyarrow version; its content is pinned by job.json.
    store.put_once(MANIFEST_KEY, _parquet_bytes(manifest_with_shards))


def _mismatch_message(store: Store, existing: dict, job_doc: dict) -> str:
    what = []
    if existing.get("manifest", {}).get("fingerprint") != job_doc["manifest"]["fingerprint"]:
        what.append(f"the manifest differs (this output was made from {existing['manifest'].get('source')})")
    old, new = _flatten(existing.get("identity", {})), _flatten(job_doc["identity"])
    what += [f"{k} was {old.get(k)!r}, now {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k)]
    return (f"{store.uri} already holds a different run: {'; '.join(what) or 'settings differ'}. "
            "Use a new --output, or rerun with the original manifest and settings to resume.")


def _flatten(doc: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def committed_shards(store: Store) -> dict[str, dict]:
    """Markers of the shards that are done, by shard id."""
    keys = store.list(MARKER_PREFIX)
    return {key[len(MARKER_PREFIX):].removesuffix(".json"): json.loads(data)
            for key, data in zip(keys, _get_many(store, keys))}


def _get_many(store: Store, keys: list[str]) -> list[bytes]:
    # A resume of a large run reads tens of thousands of small objects; one after another, their round trips
    # add up to a long wait on S3.
    if len(keys) < 2:
        return [store.get(key) for key in keys]
    with ThreadPoolExecutor(READ_THREADS) as pool:
        return list(pool.map(store.get, keys))


def existing_images(store: Store, shard_id: str) -> dict[str, str]:
    """Images already written for a shard (by an attempt that did not commit), by row id."""
    prefix = f"images/{shard_id}/"
    return {key[len(prefix):].rsplit(".", 1)[0]: key for key in store.list(prefix)}


def commit_shard(store: Store, shard_id: str, attempt: str, rows: list[dict]) -> bool:
    """Write the shard's metadata, then its create-once marker; False if another attempt won."""
    table = pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
    meta_key = metadata_key(shard_id, attempt)
    store.put(meta_key, _parquet_bytes(table))
    named = commit_marker(store, shard_id, attempt, meta_key, rows)["metadata"]
    if named != meta_key:
        store.delete(meta_key)  # the other attempt's metadata is the shard's; leave no orphan
    return named == meta_key


def commit_marker(store: Store, shard_id: str, attempt: str, meta_key: str, rows: list[dict]) -> dict:
    """Create the shard's marker naming meta_key (ours, or one an earlier attempt left uncommitted);
    returns the marker that stands: ours, or another attempt's that committed first."""
    ok = sum(1 for r in rows if r["status"] == "ok")
    marker = {"shard": shard_id, "attempt": attempt, "metadata": meta_key, "rows": len(rows),
              "ok": ok, "failed": len(rows) - ok, "committed_at": _now()}
    if store.put_once(marker_key(shard_id), _json_bytes(marker)) is PutResult.CREATED:
        _drop_uncommitted(store, shard_id, meta_key)
        return marker
    return json.loads(store.get(marker_key(shard_id)))


def _drop_uncommitted(store: Store, shard_id: str, committed: str) -> None:
    """Delete the metadata of attempts that died between their metadata and their marker (a killed actor,
    a stopped run): once a marker stands, nothing can commit them any more."""
    for key in store.list(f"metadata/{shard_id}."):
        if key != committed:
            store.delete(key)


def uncommitted_metadata(store: Store, shard_id: str) -> dict[str, list[dict]]:
    """Metadata files of a shard that attempts wrote (committed or not), by key: their rows. An attempt
    that dies between its metadata and its marker leaves one; a later attempt can commit it as it is."""
    found = {}
    for key in store.list(f"metadata/{shard_id}."):
        try:
            found[key] = pq.read_table(pa.BufferReader(store.get(key)), schema=RESULT_SCHEMA).to_pylist()
        except ObjectNotFound:  # deleted since the listing: its attempt lost the commit
            continue
    return found


def run_counts(store: Store) -> dict[str, Any]:
    """Rows and shards done so far, read from the store alone (any run, finished or not)."""
    job = json.loads(store.get(JOB_KEY))
    markers = committed_shards(store)
    counts = {
        "rows_total": job["manifest"]["rows"],
        "shards_total": job["manifest"]["shards"],
        "shards_done": len(markers),
        "rows_ok": sum(m["ok"] for m in markers.values()),
        "rows_failed": sum(m["failed"] for m in markers.values()),
    }
    counts["rows_pending"] = counts["rows_total"] - counts["rows_ok"] - counts["rows_failed"]
    counts["finished"] = store.exists(SUCCESS_KEY)
    return counts


def write_success(store: Store, summary: dict[str, Any]) -> None:
    store.put(SUCCESS_KEY, _json_bytes(summary))


def read_results(output: str | Store, s3: Any = None) -> pa.Table:
    """Every manifest column plus image, status, error and provenance, one row per committed manifest id."""
    from sdbatch.store import open_store

    store = output if isinstance(output, Store) else open_store(str(output), s3)
    try:
        manifest = pq.read_table(pa.BufferReader(store.get(MANIFEST_KEY)))
    except ObjectNotFound as exc:
        raise FileNotFoundError(f"{store.uri} holds no sdbatch run (no {MANIFEST_KEY})") from exc
    blobs = _get_many(store, [m["metadata"] for m in committed_shards(store).values()])
    parts = [pq.read_table(pa.BufferReader(blob), schema=RESULT_SCHEMA) for blob in blobs]
    results = pa.concat_tables(parts) if parts else RESULT_SCHEMA.empty_table()
    return _join(manifest, results)


def _join(manifest: pa.Table, results: pa.Table) -> pa.Table:
    position = {row_id: n for n, row_id in enumerate(results.column("id").to_pylist())}
    manifest_ids = manifest.column("id").to_pylist()
    keep = [n for n, row_id in enumerate(manifest_ids) if row_id in position]
    picked_manifest = manifest.take(pa.array(keep, pa.int64()))
    picked_results = results.take(pa.array([position[manifest_ids[n]] for n in keep], pa.int64()))
    # The result's values are the ones used (e.g. the model's native size where the manifest had none).
    columns = {name: picked_manifest.column(name) for name in manifest.column_names}
    columns.update({name: picked_results.column(name) for name in results.column_names})
    order = list(manifest.column_names) + [n for n in results.column_names if n not in manifest.column_names]
    return pa.table({name: columns[name] for name in order})


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _json_bytes(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
