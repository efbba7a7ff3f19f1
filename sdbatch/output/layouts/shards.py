"""One shard's output per layout: which rows are left to render, their images written beside rendering, the commit.

Files layout: each image is created once under images/{shard}/; images an earlier attempt wrote are adopted.
Webdataset layout: the shard's samples are one tar, created once after every row has rendered. The tar
decides which rows are ok: whoever finds a tar already there (an attempt that died before its marker, or
a racing one that wrote first) records the tar's rows rather than its own renders, so the metadata and
the tar never disagree and each ok row is one sample, whichever attempt commits.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sdbatch.output.commits import commit_marker, commit_shard, uncommitted_metadata
from sdbatch.output.job import EXTENSIONS, existing_images, image_key
from sdbatch.output.layouts.tar import Sample, build_tar, member_ref, rows_from_tar, tar_key
from sdbatch.output.records import (
    RenderedRow,
    adopted_row,
    failed_row,
    image_parameters,
    result_row,
    sample_record,
)
from sdbatch.output.uploads import Uploads
from sdbatch.store.base import PutResult, Store
from sdbatch.tasks import ShardTask

# Why a row is missing from a tar that another attempt wrote, when that attempt's own error is lost with it.
LOST_ERROR = ("failed in attempt {attempt}, which wrote this shard's tar without it and stopped before committing; "
              "its error was not kept")


@dataclass(frozen=True)
class Outcome:
    attempt: str
    marker: dict  # the shard's marker that stands: this attempt's, or another's that committed first
    results: list[dict]
    rendered: int  # rows rendered by this attempt
    adopted: int  # rows whose image an earlier or racing attempt wrote
    pipeline_seconds: float  # this attempt's time in pipeline calls, whichever attempt's images stand

    @property
    def committed(self) -> bool:
        return self.marker["attempt"] == self.attempt


def shard_output(task: ShardTask, store: Store, uploads: Uploads, unrendered: dict[str, Any]):
    """The output of one attempt at a shard, for its layout. `unrendered`: the provenance of rows this
    attempt records without rendering them (adopted, or lost with another attempt)."""
    kind = WebdatasetShard if task.layout == "webdataset" else FilesShard
    return kind(task, store, uploads, unrendered)


class FilesShard:
    """images/{shard}/{id}.{ext}, each created once; rows an earlier attempt wrote are adopted, not rendered."""

    def __init__(self, task: ShardTask, store: Store, uploads: Uploads, unrendered: dict[str, Any]):
        self.task, self.store, self.uploads = task, store, uploads
        self.done = existing_images(store, task.shard_id)  # a listing: it waits beside another shard's render
        self.todo = [row for row in task.rows if row["id"] not in self.done]
        self.results = [adopted_row(task, row, self.done[row["id"]], unrendered)
                        for row in task.rows if row["id"] in self.done]
        self.pending: list[tuple[dict, Future | None]] = []

    def to_render(self) -> list[dict] | None:
        """The rows this attempt renders (None: none, and no rendering phase at all)."""
        return self.todo

    def add(self, rendered: RenderedRow, provenance: dict[str, Any]) -> None:
        """A rendered (or failed) row, on the device's thread: its image goes to the uploads, which hold the
        pixels from here on."""
        task = self.task
        key = image_key(task.shard_id, rendered.row["id"], task.image_format)
        record = result_row(task, rendered, key, provenance)
        future = None
        if rendered.ok:
            future = self.uploads.submit(rendered.image, key, task.image_format, task.quality,
                                         image_parameters(rendered.row, record))
        self.pending.append((record, future))

    def finish(self) -> Outcome:
        """Wait for the writes (one that failed fails the attempt), then commit."""
        adopted = len(self.results)
        for record, future in self.pending:
            if future is not None:
                # CONFLICT: a racing attempt wrote this key first; its image is the one the key holds.
                record["adopted"] = future.result() is PutResult.CONFLICT
                adopted += record["adopted"]
            self.results.append(record)
        task = self.task
        marker = commit_shard(self.store, task.shard_id, task.attempt, self.results)
        return Outcome(task.attempt, marker, self.results, len(self.todo), adopted,
                       _seconds(r for r, _ in self.pending))


class WebdatasetShard:
    """shards/{shard}.tar, created once after every row has rendered; a tar already there is adopted."""

    def __init__(self, task: ShardTask, store: Store, uploads: Uploads, unrendered: dict[str, Any]):
        self.task, self.store, self.uploads, self.unrendered = task, store, uploads, unrendered
        self.key, self.extension = tar_key(task.shard_id), EXTENSIONS[task.image_format]
        # An earlier attempt wrote the tar and stopped before its marker: nothing is rendered again.
        self.found = store.get(self.key) if store.exists(self.key) else None
        self.pending: dict[str, tuple[dict, dict, Future | None]] = {}

    def to_render(self) -> list[dict] | None:
        return None if self.found is not None else list(self.task.rows)

    def add(self, rendered: RenderedRow, provenance: dict[str, Any]) -> None:
        row = rendered.row
        record = result_row(self.task, rendered, member_ref(self.task.shard_id, row["id"], self.extension),
                            provenance)
        future = None
        if rendered.ok:  # encoded on the I/O threads while the next batch renders
            future = self.uploads.encode(rendered.image, self.task.image_format, self.task.quality,
                                         image_parameters(row, record))
        self.pending[row["id"]] = (row, record, future)

    def finish(self) -> Outcome:
        """Build and put the tar (after the device is free for the next shard), then commit."""
        task = self.task
        if self.found is not None:
            return self._adopt(self.found, {}, rendered=0)
        # Manifest order, not render order (batches group by variant): the same rows give the same tar.
        ordered = [self.pending[row["id"]] for row in task.rows]
        samples = [Sample(row["id"], self.extension, future.result(), sample_record(row, record), row["prompt"])
                   for row, record, future in ordered if future is not None]
        results = [record for _, record, _ in ordered]
        if self.store.put_once(self.key, build_tar(samples)) is PutResult.CONFLICT:  # a racing attempt's tar stands
            return self._adopt(self.store.get(self.key), {r["id"]: r for r in results}, rendered=len(results))
        return Outcome(task.attempt, commit_shard(self.store, task.shard_id, task.attempt, results), results,
                       len(results), 0, _seconds(results))

    def _adopt(self, data: bytes, own: dict[str, dict], rendered: int) -> Outcome:
        """Commit the rows of a tar another attempt wrote: its samples are the shard's ok rows, and every other
        row failed there. If that attempt's metadata is in the store, commit it as it is (errors included)."""
        task, store = self.task, self.store
        kept = {row["id"]: row for row in rows_from_tar(data)}
        for meta_key, rows in uncommitted_metadata(store, task.shard_id).items():
            if _agrees(rows, kept, task):
                marker = commit_marker(store, task.shard_id, task.attempt, meta_key, rows)
                return Outcome(task.attempt, marker, rows, rendered, len(kept), _seconds(own.values()))
        writer = next(iter(kept.values()), {}).get("attempt", "unknown")
        # A sample's own record (device, timings, the attempt that rendered it) is what the tar holds.
        results = [{**kept[row["id"]], "adopted": True} if row["id"] in kept else
                   self._missing(row, own.get(row["id"]), writer) for row in task.rows]
        marker = commit_shard(store, task.shard_id, task.attempt, results)
        return Outcome(task.attempt, marker, results, rendered, len(kept), _seconds(own.values()))

    def _missing(self, row: dict, own: dict | None, writer: str) -> dict:
        if own is not None and own["status"] == "failed":
            return own  # it failed here too: our error is as good as theirs
        return failed_row(self.task, row, LOST_ERROR.format(attempt=writer), self.unrendered)


def _agrees(rows: list[dict], kept: dict[str, dict], task: ShardTask) -> bool:
    """Metadata that covers the shard and whose ok rows are exactly the tar's samples."""
    ok = {r["id"] for r in rows if r["status"] == "ok"}
    return ok == set(kept) and {r["id"] for r in rows} == {row["id"] for row in task.rows}


def _seconds(records) -> float:
    return sum(r.get("render_seconds") or 0.0 for r in records)
