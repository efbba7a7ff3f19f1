"""One shard's output: renders the rows not yet stored, writes their images beside rendering, commits the shard.

Files layout: each image is created once under images/{shard}/; images an earlier attempt wrote are adopted.
Webdataset layout: the shard's samples are one tar, created once after every row has rendered. The tar
decides which rows are ok: whoever finds a tar already there (an attempt that died before its marker, or
a racing one that wrote first) records the tar's rows rather than its own renders, so the metadata and
the tar never disagree and each ok row is one sample, whichever attempt commits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sdbatch.output import (
    EXTENSIONS,
    commit_marker,
    commit_shard,
    existing_images,
    image_key,
    uncommitted_metadata,
)
from sdbatch.render.output.results import (
    adopted_row,
    failed_row,
    image_parameters,
    result_row,
    sample_record,
)
from sdbatch.store.base import PutResult
from sdbatch.tasks import ShardResult, ShardTask
from sdbatch.webdataset import Sample, build_tar, member_ref, rows_from_tar, tar_key

if TYPE_CHECKING:
    from sdbatch.render.renderer import Renderer

T = TypeVar("T")
# Runs a shard's rendering phase where the device is, one shard at a time, and returns its value. Inline by
# default; an actor passes its device thread, so that one shard's writes and commit (waiting on storage)
# overlap the next shard's rendering.
OnDevice = Callable[[Callable[[], Any]], Any]

# Why a row is missing from a tar that another attempt wrote, when that attempt's own error is lost with it.
LOST_ERROR = ("failed in attempt {attempt}, which wrote this shard's tar without it and stopped before committing; "
              "its error was not kept")


@dataclass(frozen=True)
class Outcome:
    committed: bool
    results: list[dict]
    rendered: int  # rows rendered by this attempt
    adopted: int  # rows whose image an earlier or racing attempt wrote
    pipeline_seconds: float  # this attempt's time in pipeline calls, whichever attempt's images stand


@dataclass
class Rendering:
    """What one shard's rendering phase did on the device."""

    started: float = 0.0  # perf_counter when the device was this shard's: waiting for it is not the shard's time
    loads: tuple[int, int, int] = (0, 0, 0)  # model, LoRA and ControlNet loads


def inline(work: Callable[[], T]) -> T:
    return work()


def write_shard(renderer: Renderer, task: ShardTask, on_device: OnDevice = inline) -> ShardResult:
    """Render the rows not yet in the store, write their images, commit the shard's metadata."""
    started, phase = time.perf_counter(), Rendering()
    write = _webdataset_shard if task.layout == "webdataset" else _files_shard
    out = write(renderer, task, lambda work: on_device(lambda: _timed(renderer, phase, work)))
    failures = {r["id"]: r["error"] for r in out.results if r["status"] == "failed"}
    model_loads, lora_loads, controlnet_loads = phase.loads
    return ShardResult(task.shard_id, task.attempt, out.committed, len(out.results) - len(failures), len(failures),
                       rendered=out.rendered, adopted=out.adopted,
                       seconds=time.perf_counter() - (phase.started or started), failures=failures,
                       model_loads=model_loads, lora_loads=lora_loads, controlnet_loads=controlnet_loads,
                       actor=renderer.settings.name, pipeline_seconds=out.pipeline_seconds)


def _timed(renderer: Renderer, phase: Rendering, work: Callable[[], T]) -> T:
    """Run the rendering phase, noting when it got the device and the loads it made (counted here: another
    shard's rendering may follow while this one commits)."""
    def counts() -> tuple[int, int, int]:
        return renderer.model_loads, renderer.lora_loads, renderer.controlnet_loads

    phase.started, before = time.perf_counter(), counts()
    try:
        return work()
    finally:
        phase.loads = tuple(after - b for after, b in zip(counts(), before))


def _files_shard(renderer: Renderer, task: ShardTask, on_device: OnDevice) -> Outcome:
    done = existing_images(renderer.store, task.shard_id)  # a listing: it waits beside another shard's render
    todo = [row for row in task.rows if row["id"] not in done]
    results = [adopted_row(task, row, done[row["id"]], renderer.provenance(ok=False))
               for row in task.rows if row["id"] in done]

    def render() -> list[tuple[dict, Future | None]]:
        pending = []
        for rendered in renderer.render_rows(todo):
            key = image_key(task.shard_id, rendered.row["id"], task.image_format)
            record = result_row(task, rendered, key, renderer.provenance(rendered.ok))
            future = None
            if rendered.ok:  # the uploads hold the pixels from here on
                future = renderer.uploads.submit(rendered.image, key, task.image_format, task.quality,
                                                 image_parameters(rendered.row, record))
            pending.append((record, future))
        return pending

    pending = on_device(render)
    adopted = len(results)
    for record, future in pending:
        if future is not None:  # an upload that failed fails the attempt
            # CONFLICT: a racing attempt wrote this key first; its image is the one the key holds.
            record["adopted"] = future.result() is PutResult.CONFLICT
            adopted += record["adopted"]
        results.append(record)
    committed = commit_shard(renderer.store, task.shard_id, task.attempt, results)
    return Outcome(committed, results, len(todo), adopted, _seconds(record for record, _ in pending))


def _webdataset_shard(renderer: Renderer, task: ShardTask, on_device: OnDevice) -> Outcome:
    store, key = renderer.store, tar_key(task.shard_id)
    if store.exists(key):  # an earlier attempt wrote the tar and stopped before its marker
        return _adopt_tar(renderer, task, store.get(key), {}, rendered=0)
    extension = EXTENSIONS[task.image_format]

    def render() -> dict[str, tuple[dict, dict, Future | None]]:
        pending = {}
        for rendered in renderer.render_rows(list(task.rows)):
            row = rendered.row
            record = result_row(task, rendered, member_ref(task.shard_id, row["id"], extension),
                                renderer.provenance(rendered.ok))
            future = None
            if rendered.ok:  # encoded on the I/O threads while the next batch renders
                future = renderer.uploads.encode(rendered.image, task.image_format, task.quality,
                                                 image_parameters(row, record))
            pending[row["id"]] = (row, record, future)
        return pending

    # The tar is built and put after the device is free for the next shard.
    pending = on_device(render)
    # Manifest order, not render order (batches group by variant): the same rows give the same tar.
    ordered = [pending[row["id"]] for row in task.rows]
    samples = [Sample(row["id"], extension, future.result(), sample_record(row, record), row["prompt"])
               for row, record, future in ordered if future is not None]
    results = [record for _, record, _ in ordered]
    if store.put_once(key, build_tar(samples)) is PutResult.CONFLICT:  # a racing attempt's tar stands
        return _adopt_tar(renderer, task, store.get(key), {r["id"]: r for r in results}, rendered=len(results))
    return Outcome(commit_shard(store, task.shard_id, task.attempt, results), results, len(results), 0,
                   _seconds(results))


def _adopt_tar(renderer: Renderer, task: ShardTask, data: bytes, own: dict[str, dict], rendered: int) -> Outcome:
    """Commit the rows of a tar another attempt wrote: its samples are the shard's ok rows, and every other
    row failed there. If that attempt's metadata is in the store, commit it as it is (errors included)."""
    kept = {row["id"]: row for row in rows_from_tar(data)}
    for meta_key, rows in uncommitted_metadata(renderer.store, task.shard_id).items():
        if _agrees(rows, kept, task):
            marker = commit_marker(renderer.store, task.shard_id, task.attempt, meta_key, rows)
            return Outcome(marker["attempt"] == task.attempt, rows, rendered, len(kept), _seconds(own.values()))
    writer = next(iter(kept.values()), {}).get("attempt", "unknown")
    # A sample's own record (device, timings, the attempt that rendered it) is what the tar holds.
    results = [{**kept[row["id"]], "adopted": True} if row["id"] in kept else
               _missing(renderer, task, row, own.get(row["id"]), writer) for row in task.rows]
    committed = commit_shard(renderer.store, task.shard_id, task.attempt, results)
    return Outcome(committed, results, rendered, len(kept), _seconds(own.values()))


def _agrees(rows: list[dict], kept: dict[str, dict], task: ShardTask) -> bool:
    """Metadata that covers the shard and whose ok rows are exactly the tar's samples."""
    ok = {r["id"] for r in rows if r["status"] == "ok"}
    return ok == set(kept) and {r["id"] for r in rows} == {row["id"] for row in task.rows}


def _missing(renderer: Renderer, task: ShardTask, row: dict, own: dict | None, writer: str) -> dict:
    if own is not None and own["status"] == "failed":
        return own  # it failed here too: our error is as good as theirs
    return failed_row(task, row, LOST_ERROR.format(attempt=writer), renderer.provenance(ok=False))


def _seconds(records) -> float:
    return sum(r.get("render_seconds") or 0.0 for r in records)
