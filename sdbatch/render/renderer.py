"""Renderer: loads a pipeline once, renders shards in micro-batches, writes images and commits each shard."""

from __future__ import annotations

import json
import platform
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from sdbatch import __version__
from sdbatch.output import commit_shard, existing_images, image_key
from sdbatch.plan import VARIANT_COLUMNS
from sdbatch.render.encode import encode_image
from sdbatch.render.loading import LoadedModel, load_model, make_scheduler, pick_device
from sdbatch.storage import PutResult, Store
from sdbatch.tasks import ShardResult, ShardTask

MAX_ERROR_CHARS = 1000


@dataclass(frozen=True)
class RendererSettings:
    # None: CUDA when present, else CPU.
    device: str | None = None
    # Rows per pipeline call; see RunSettings.batch_size.
    batch_size: int = 4
    # Encoding and uploads run beside rendering; more threads than this rarely helps one GPU.
    io_threads: int = 4
    # None leaves torch's default; Ray actors pass the CPUs they were given (Ray sets OMP to 1).
    cpu_threads: int | None = None
    # Recorded in each result row, so a bad image can be traced to the process that made it.
    name: str = platform.node()


@dataclass(frozen=True)
class RenderedRow:
    row: dict[str, Any]
    image: Any  # PIL image, or None when the row failed
    error: str | None
    seconds: float
    batch_size: int
    width: int
    height: int
    scheduler_class: str | None = None


class Renderer:
    """Stateful: holds one warm pipeline; call render_shard many times. Usable in a plain loop."""

    def __init__(self, store: Store, settings: RendererSettings = RendererSettings()):
        if settings.cpu_threads:
            torch.set_num_threads(settings.cpu_threads)
        self.store = store
        self.settings = settings
        self.device, self.dtype = pick_device(settings.device)
        self.model_loads = 0
        self._model: LoadedModel | None = None
        self._schedulers: dict[str | None, object] = {}  # per scheduler name, for the loaded model
        self._uploads = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="sdbatch-io")
        # Bounds the images waiting to be encoded/uploaded, so a slow store slows rendering, not memory.
        self._upload_slots = threading.BoundedSemaphore(settings.io_threads * 2)
        self.versions = json.dumps(_versions(), sort_keys=True)

    def model(self, reference: str) -> LoadedModel:
        """The warm pipeline for a model, loading it (and freeing the previous one) on first use."""
        if self._model is None or self._model.reference != reference:
            self._model = None
            self._schedulers.clear()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self._model = load_model(reference, self.device, self.dtype)
            self.model_loads += 1
        return self._model

    def render_rows(self, rows: list[dict[str, Any]]) -> Iterator[RenderedRow]:
        """Render rows in micro-batches of rows that share a variant; a failing batch is retried row by row."""
        for batch in _micro_batches(rows, self.settings.batch_size):
            yield from self._render_batch(batch)

    def _render_batch(self, batch: list[dict[str, Any]]) -> list[RenderedRow]:
        self.model(batch[0]["model"])  # a model that cannot load fails the shard, not its rows
        started = time.perf_counter()
        try:
            images, (width, height), scheduler = self._call_pipeline(batch)
        except Exception as exc:
            if len(batch) > 1:  # isolate the bad row (or fit an out-of-memory batch) one row at a time
                return [out for row in batch for out in self._render_batch([row])]
            return [RenderedRow(batch[0], None, _describe(exc), time.perf_counter() - started, 1, 0, 0)]
        share = (time.perf_counter() - started) / len(batch)
        return [RenderedRow(r, im, None, share, len(batch), width, height, scheduler)
                for r, im in zip(batch, images)]

    def _call_pipeline(self, batch: list[dict[str, Any]]):
        first = batch[0]
        model = self.model(first["model"])
        pipe = model.pipeline
        name = first["scheduler"]
        if name not in self._schedulers:  # building one costs numpy work on every call otherwise
            self._schedulers[name] = make_scheduler(model, name)
        pipe.scheduler = self._schedulers[name]
        width = first["width"] or model.native_size[0]
        height = first["height"] or model.native_size[1]
        # One CPU generator per row: a row's noise never depends on its batch or its neighbours.
        generators = [torch.Generator("cpu").manual_seed(int(r["seed"])) for r in batch]
        with torch.inference_mode():
            out = pipe(prompt=[r["prompt"] for r in batch],
                       negative_prompt=[r["negative_prompt"] or "" for r in batch],
                       num_inference_steps=int(first["steps"]), guidance_scale=float(first["guidance_scale"]),
                       width=int(width), height=int(height), generator=generators, output_type="pil")
        return out.images, (int(width), int(height)), type(pipe.scheduler).__name__

    def render_shard(self, task: ShardTask) -> ShardResult:
        """Render the rows not yet in the store, write their images, commit the shard's metadata."""
        started = time.perf_counter()
        loads_before = self.model_loads
        done = existing_images(self.store, task.shard_id)
        todo = [row for row in task.rows if row["id"] not in done]
        results = [self._adopted_row(task, row, done[row["id"]]) for row in task.rows if row["id"] in done]
        pending: list[tuple[RenderedRow, str, Future]] = []
        for rendered in self.render_rows(todo):
            key = image_key(task.shard_id, rendered.row["id"], task.image_format)
            future = self._upload(rendered, key, task) if rendered.image is not None else None
            pending.append((rendered, key, future))
        for rendered, key, future in pending:
            put = future.result() if future is not None else None  # an upload that failed fails the attempt
            results.append(self._result_row(task, rendered, key, put))
        committed = commit_shard(self.store, task.shard_id, task.attempt, results)
        failures = {r["id"]: r["error"] for r in results if r["status"] == "failed"}
        return ShardResult(task.shard_id, task.attempt, committed, len(results) - len(failures), len(failures),
                           rendered=len(todo), adopted=len(task.rows) - len(todo),
                           seconds=time.perf_counter() - started, failures=failures,
                           model_loads=self.model_loads - loads_before, actor=self.settings.name)

    def _upload(self, rendered: RenderedRow, key: str, task: ShardTask) -> Future:
        self._upload_slots.acquire()

        def encode_and_put() -> PutResult:
            try:
                return self.store.put_once(key, encode_image(rendered.image, task.image_format, task.quality))
            finally:
                self._upload_slots.release()

        return self._uploads.submit(encode_and_put)

    def _result_row(self, task: ShardTask, rendered: RenderedRow, key: str, put: PutResult | None) -> dict:
        row = rendered.row
        ok = rendered.image is not None
        model = self._model
        return {
            **_base_row(task, row), "image": key if ok else None, "status": "ok" if ok else "failed",
            "error": rendered.error, "width": rendered.width or row["width"],
            "height": rendered.height or row["height"], "scheduler_class": rendered.scheduler_class,
            "model_hash": model.model_hash if model and ok else None,
            "device": self.device_name(), "dtype": str(self.dtype).removeprefix("torch."),
            "versions": self.versions, "render_seconds": rendered.seconds,
            "batch_size": rendered.batch_size, "actor": self.settings.name,
            # CONFLICT: a racing attempt wrote this key first; its image is the one the key holds.
            "adopted": put is PutResult.CONFLICT,
        }

    def _adopted_row(self, task: ShardTask, row: dict, key: str) -> dict:
        # Written by an attempt that died before committing: its device and timing are unknown.
        return {**_base_row(task, row), "image": key, "status": "ok", "error": None,
                "width": row["width"], "height": row["height"], "versions": self.versions,
                "actor": self.settings.name, "adopted": True}

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return f"cuda:{torch.cuda.current_device()} {torch.cuda.get_device_name()}"
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

    def close(self) -> None:
        self._uploads.shutdown(wait=True)


def _base_row(task: ShardTask, row: dict) -> dict:
    return {"id": row["id"], "shard": task.shard_id, "attempt": task.attempt, "seed": row["seed"],
            "steps": row["steps"], "guidance_scale": row["guidance_scale"], "scheduler": row["scheduler"],
            "model": row["model"], "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _micro_batches(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        if batch and (len(batch) == size or _variant(row) != _variant(batch[0])):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


def _variant(row: dict[str, Any]) -> tuple:
    return tuple(row[name] for name in VARIANT_COLUMNS)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {"sdbatch": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}
