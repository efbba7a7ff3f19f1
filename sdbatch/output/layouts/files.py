"""The files layout: images/{shard}/{id}.{ext}, each created once; images an earlier attempt wrote are adopted."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa

from sdbatch.output.commits import commit_shard
from sdbatch.output.formats import EXTENSIONS, IMAGE_SUFFIXES
from sdbatch.output.layouts.layout import FoundImage, Outcome, pipeline_seconds
from sdbatch.output.records import RenderedRow, adopted_row, image_parameters, result_row
from sdbatch.output.uploads import Uploads
from sdbatch.store.base import PutResult, Store
from sdbatch.tasks import ShardTask


def image_key(shard_id: str, row_id: str, image_format: str) -> str:
    return f"images/{shard_id}/{row_id}.{EXTENSIONS[image_format]}"


def existing_images(store: Store, shard_id: str) -> dict[str, str]:
    """Images already written for a shard (by an attempt that did not commit), by row id."""
    prefix = f"images/{shard_id}/"
    return {key[len(prefix):].rsplit(".", 1)[0]: key for key in store.list(prefix)}


class FilesLayout:
    """Browsable: every image is an object of its own, named by its shard and id."""

    name = "files"
    loose_images = True

    def shard(self, task: ShardTask, store: Store, uploads: Uploads, unrendered: dict[str, Any]) -> FilesShard:
        return FilesShard(task, store, uploads, unrendered)

    def check_ids(self, ids: pa.Array | pa.ChunkedArray, first_row: int) -> None:
        return None  # every manifest id is a file name already

    def images_in(self, store: Store, key: str) -> Iterator[FoundImage]:
        if PurePosixPath(key).suffix.lower() in IMAGE_SUFFIXES:
            yield FoundImage(key, PurePosixPath(key).name, store.get(key))

    def browsable(self, store: Store) -> Callable[[str], str]:
        return lambda ref: ref


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
        return self.todo

    def add(self, rendered: RenderedRow, provenance: dict[str, Any]) -> None:
        """A rendered (or failed) row: its image goes to the uploads, which hold the pixels from here on."""
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
                       pipeline_seconds(r for r, _ in self.pending))
