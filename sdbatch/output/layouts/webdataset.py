"""The webdataset layout: one tar per shard with {id}.{ext}, {id}.json (the full result row) and {id}.txt (the prompt).

The shard's samples are one tar, created once after every row has rendered. The tar decides which rows are ok:
whoever finds a tar already there (an attempt that died before its marker, or a racing one that wrote first)
records the tar's rows rather than its own renders, so the metadata and the tar never disagree and each ok row is
one sample, whichever attempt commits.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.errors import ManifestError
from sdbatch.output.commits import commit_marker, commit_shard, uncommitted_metadata
from sdbatch.output.formats import EXTENSIONS, IMAGE_SUFFIXES
from sdbatch.output.layouts.layout import FoundImage, Outcome, pipeline_seconds
from sdbatch.output.records import RenderedRow, failed_row, image_parameters, result_row, sample_record
from sdbatch.output.uploads import Uploads
from sdbatch.store.base import PutResult, Store
from sdbatch.tasks import ShardTask

# Why a row is missing from a tar that another attempt wrote, when that attempt's own error is lost with it.
LOST_ERROR = ("failed in attempt {attempt}, which wrote this shard's tar without it and stopped before committing; "
              "its error was not kept")
GALLERY_FILES = "gallery_files"  # images copied out of the tars, so a page can show them
TARS_CACHED = 4  # tars kept in memory while copying members out (a gallery asks in group, not tar, order)


class WebdatasetLayout:
    """For data loaders: a shard is one tar of samples, read by the `webdataset` library as it is."""

    name = "webdataset"
    loose_images = False

    def shard(self, task: ShardTask, store: Store, uploads: Uploads, unrendered: dict[str, Any]) -> WebdatasetShard:
        return WebdatasetShard(task, store, uploads, unrendered)

    def check_ids(self, ids: pa.Array | pa.ChunkedArray, first_row: int) -> None:
        # WebDataset loaders group a tar's members into samples by the name before the first dot.
        dotted = pc.indices_nonzero(pc.match_substring(ids, ".")).to_pylist()
        if dotted:
            raise ManifestError(f"column 'id', row id {ids[dotted[0]].as_py()!r} (row {first_row + dotted[0]}): "
                                "contains '.', which data loaders read as the start of a file extension in the "
                                "webdataset layout; use ids without '.' (e.g. replace it with '_') or --layout files")

    def images_in(self, store: Store, key: str) -> Iterator[FoundImage]:
        if key.endswith(".tar"):
            for name, data in members(store.get(key), IMAGE_SUFFIXES):
                yield FoundImage(f"{key}#{name}", name, data)

    def browsable(self, store: Store) -> Callable[[str], str]:
        return _MemberCopies(store).key


@dataclass(frozen=True)
class Sample:
    row_id: str
    extension: str  # png, jpg or webp
    image: bytes
    result: dict[str, Any]  # the full result row, labels included
    prompt: str


def tar_key(shard_id: str) -> str:
    return f"shards/{shard_id}.tar"


def member_ref(shard_id: str, row_id: str, extension: str) -> str:
    """The `image` of a result row in this layout: the tar's key, '#', the member's name."""
    return f"{tar_key(shard_id)}#{row_id}.{extension}"


def split_ref(ref: str) -> tuple[str, str | None]:
    """(object key, member name or None) of an `image` value."""
    key, _, member = ref.partition("#")
    return key, member or None


def build_tar(samples: list[Sample]) -> bytes:
    """The shard's tar, byte for byte the same for the same samples (fixed mtimes and owners)."""
    buffer = io.BytesIO()
    # PAX: a member name over 100 characters (ids may have 128) gets an extended header; shorter names
    # get plain ustar headers, which every tar reader takes.
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            _add(tar, f"{sample.row_id}.{sample.extension}", sample.image)
            _add(tar, f"{sample.row_id}.json", json.dumps(sample.result, sort_keys=True, default=str).encode())
            _add(tar, f"{sample.row_id}.txt", sample.prompt.encode())
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def rows_from_tar(data: bytes) -> list[dict[str, Any]]:
    """The result rows stored in a shard's tar (to adopt a tar whose attempt died before committing)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        return [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]


def read_member(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        return tar.extractfile(name).read()


def members(data: bytes, suffixes: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """(name, bytes) of the tar's members whose names end with one of the suffixes, in tar order."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()
                if m.isfile() and m.name.lower().endswith(suffixes)]


class _MemberCopies:
    """Keys a page can link to: members of the tars copied out once (a plain key stays as it is)."""

    def __init__(self, store: Store):
        self.store = store
        self.tars: dict[str, bytes] = {}

    def key(self, ref: str) -> str:
        tar, member = split_ref(ref)
        if member is None:
            return ref
        out = f"{GALLERY_FILES}/{member}"
        if not self.store.exists(out):
            self.store.put(out, read_member(self._tar(tar), member))
        return out

    def _tar(self, key: str) -> bytes:
        if key not in self.tars:
            if len(self.tars) >= TARS_CACHED:
                self.tars.pop(next(iter(self.tars)))
            self.tars[key] = self.store.get(key)
        return self.tars[key]


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
                       len(results), 0, pipeline_seconds(results))

    def _adopt(self, data: bytes, own: dict[str, dict], rendered: int) -> Outcome:
        """Commit the rows of a tar another attempt wrote: its samples are the shard's ok rows, and every other
        row failed there. If that attempt's metadata is in the store, commit it as it is (errors included)."""
        task, store = self.task, self.store
        kept = {row["id"]: row for row in rows_from_tar(data)}
        for meta_key, rows in uncommitted_metadata(store, task.shard_id).items():
            if _agrees(rows, kept, task):
                marker = commit_marker(store, task.shard_id, task.attempt, meta_key, rows)
                return Outcome(task.attempt, marker, rows, rendered, len(kept), pipeline_seconds(own.values()))
        writer = next(iter(kept.values()), {}).get("attempt", "unknown")
        # A sample's own record (device, timings, the attempt that rendered it) is what the tar holds.
        results = [{**kept[row["id"]], "adopted": True} if row["id"] in kept else
                   self._missing(row, own.get(row["id"]), writer) for row in task.rows]
        marker = commit_shard(store, task.shard_id, task.attempt, results)
        return Outcome(task.attempt, marker, results, rendered, len(kept), pipeline_seconds(own.values()))

    def _missing(self, row: dict, own: dict | None, writer: str) -> dict:
        if own is not None and own["status"] == "failed":
            return own  # it failed here too: our error is as good as theirs
        return failed_row(self.task, row, LOST_ERROR.format(attempt=writer), self.unrendered)


def _agrees(rows: list[dict], kept: dict[str, dict], task: ShardTask) -> bool:
    """Metadata that covers the shard and whose ok rows are exactly the tar's samples."""
    ok = {r["id"] for r in rows if r["status"] == "ok"}
    return ok == set(kept) and {r["id"] for r in rows} == {row["id"] for row in task.rows}
