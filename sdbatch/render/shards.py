"""One shard's output: renders the rows not yet stored, writes their images beside rendering, commits the shard."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING

from sdbatch.output import commit_shard, existing_images, image_key
from sdbatch.render.results import RenderedRow, adopted_row, result_row
from sdbatch.tasks import ShardResult, ShardTask

if TYPE_CHECKING:
    from sdbatch.render.renderer import Renderer


def write_shard(renderer: Renderer, task: ShardTask) -> ShardResult:
    """Render the rows not yet in the store, write their images, commit the shard's metadata."""
    started = time.perf_counter()
    loads_before = (renderer.model_loads, renderer.lora_loads, renderer.controlnet_loads)
    done = existing_images(renderer.store, task.shard_id)
    todo = [row for row in task.rows if row["id"] not in done]
    results = [adopted_row(task, row, done[row["id"]], renderer.provenance(ok=False))
               for row in task.rows if row["id"] in done]
    pending: list[tuple[RenderedRow, str, Future | None]] = []
    for rendered in renderer.render_rows(todo):
        key = image_key(task.shard_id, rendered.row["id"], task.image_format)
        future = None
        if rendered.ok:
            future = renderer.uploads.submit(rendered.image, key, task.image_format, task.quality)
        pending.append((replace(rendered, image=None), key, future))  # the uploads hold the pixels now
    for rendered, key, future in pending:
        put = future.result() if future is not None else None  # an upload that failed fails the attempt
        results.append(result_row(task, rendered, key, put, renderer.provenance(rendered.ok)))
    committed = commit_shard(renderer.store, task.shard_id, task.attempt, results)
    failures = {r["id"]: r["error"] for r in results if r["status"] == "failed"}
    return ShardResult(task.shard_id, task.attempt, committed, len(results) - len(failures), len(failures),
                       rendered=len(todo), adopted=len(task.rows) - len(todo),
                       seconds=time.perf_counter() - started, failures=failures,
                       model_loads=renderer.model_loads - loads_before[0],
                       lora_loads=renderer.lora_loads - loads_before[1],
                       controlnet_loads=renderer.controlnet_loads - loads_before[2], actor=renderer.settings.name)
