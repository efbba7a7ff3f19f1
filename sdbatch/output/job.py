"""The output protocol: object keys, job.json, create-once shard commits, resume state and read_results()."""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.errors import ObjectNotFound, RunMismatch
from sdbatch.output.commits import json_bytes, read_markers
from sdbatch.output.layouts import layout_named
from sdbatch.output.layouts.layout import Layout
from sdbatch.settings import OutputSettings
from sdbatch.spec import JobSpec, fingerprint
from sdbatch.store.base import PutResult, Store
from sdbatch.version import __version__

JOB_KEY = "job.json"
MANIFEST_KEY = "manifest.parquet"
SUCCESS_KEY = "_SUCCESS.json"
def new_attempt_id() -> str:
    """Unique per render attempt, so two drivers racing on one shard never overwrite each other."""
    return uuid.uuid4().hex[:12]


class ManifestDigest:
    """SHA-256 of the normalized manifest as an Arrow IPC stream of one record batch per plan chunk,
    hashed as it is written: the fingerprint never needs the manifest whole."""

    def __init__(self) -> None:
        self.sink = _HashSink()
        self.schema: pa.Schema | None = None  # the first chunk's; later chunks are cast to it
        self.writer: pa.ipc.RecordBatchStreamWriter | None = None

    def add(self, chunk: pa.Table) -> None:
        if self.writer is None:
            self.schema = chunk.schema
            self.writer = pa.ipc.new_stream(pa.PythonFile(self.sink, mode="w"), chunk.schema)
        # A take copies every column into fresh buffers: the same rows hash the same however they were read
        # (sliced buffers, validity bitmaps without nulls).
        fresh = chunk.cast(self.schema).take(pa.array(np.arange(chunk.num_rows)))
        self.writer.write_table(fresh.combine_chunks())

    def hexdigest(self) -> str:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        return self.sink.sha.hexdigest()


class _HashSink(io.RawIOBase):
    def __init__(self) -> None:
        self.sha = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha.update(data)
        return len(data)


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


def claim_output(store: Store, job_doc: dict, planned_path: str) -> None:
    """Create job.json, or check that a racing driver created the same run; then copy the planned manifest
    (streamed) unless a copy is there. Its bytes depend on the pyarrow version; its content is pinned by
    job.json, so any copy of this run's is as good as ours."""
    if store.put_once(JOB_KEY, json_bytes(job_doc)) is not PutResult.CREATED:
        existing_run(store, job_doc)
    if not store.exists(MANIFEST_KEY):
        store.upload(planned_path, MANIFEST_KEY)


def _mismatch_message(store: Store, existing: dict, job_doc: dict) -> str:
    what = []
    if existing.get("manifest", {}).get("fingerprint") != job_doc["manifest"]["fingerprint"]:
        what.append(f"the manifest differs (this output was made from {existing['manifest'].get('source')})")
    old, new = _flatten(existing.get("identity", {})), _flatten(job_doc["identity"])
    what += [f"{k} was {old.get(k)!r}, now {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k)]
    started_by = existing.get("sdbatch_version")
    if started_by and started_by != job_doc["sdbatch_version"]:
        # A new version may normalize the same manifest into new columns: the "difference" may be only that.
        what.append(f"the run was started by sdbatch {started_by}, this is {job_doc['sdbatch_version']}, whose "
                    f"manifests and settings may have new columns; resume it with sdbatch {started_by}")
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


def run_counts(store: Store) -> dict[str, Any]:
    """Rows and shards done so far, read from the store alone (any run, finished or not)."""
    job = json.loads(store.get(JOB_KEY))
    markers = read_markers(store, job["manifest"]["shards"])
    counts = {
        "rows_total": job["manifest"]["rows"],
        "shards_total": job["manifest"]["shards"],
        "shards_done": markers.num_rows,
        "rows_ok": pc.sum(markers.column("ok")).as_py() or 0,
        "rows_failed": pc.sum(markers.column("failed")).as_py() or 0,
    }
    counts["rows_pending"] = counts["rows_total"] - counts["rows_ok"] - counts["rows_failed"]
    counts["finished"] = store.exists(SUCCESS_KEY)
    return counts


def run_layout(store: Store) -> Layout:
    """The layout the run in this store is written in (its job's output.layout)."""
    spec = json.loads(store.get(JOB_KEY)).get("spec", {})
    return layout_named(spec.get("output", {}).get("layout", OutputSettings.layout))


def write_success(store: Store, summary: dict[str, Any]) -> None:
    store.put(SUCCESS_KEY, json_bytes(summary))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
