"""Renderer: loads a pipeline once, renders shards in micro-batches; their output and commit in output/layouts/."""

from __future__ import annotations

import dataclasses
import gc
import json
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from sdbatch.errors import InputUnavailable
from sdbatch.output.layouts import layout_named
from sdbatch.output.records import RenderedRow, failed
from sdbatch.output.uploads import Uploads
from sdbatch.render import calls
from sdbatch.render.batching import (
    Batch,
    controlnets_of,
    controlnets_used,
    loras_of,
    micro_batches,
    variant_key,
)
from sdbatch.render.inputs import image_uris, row_inputs
from sdbatch.render.models.fastpath import auto_batch_size, set_cpu_threads
from sdbatch.render.models.loading import (
    LoadedModel,
    load_model,
    make_scheduler,
    pick_device,
)
from sdbatch.render.scoring import RenderScores, ShardScores
from sdbatch.render.text.cache import ConditioningCache
from sdbatch.render.text.embeddings import EmbeddingLibrary
from sdbatch.render.text.encode import PromptEncoder
from sdbatch.render.text.native import PipelinePrompts
from sdbatch.render.variants.cache import VariantCache
from sdbatch.render.variants.fetch import Fetcher, Prefetcher
from sdbatch.render.variants.loras import StateDictCache
from sdbatch.settings import RendererSettings
from sdbatch.store.base import Store
from sdbatch.tasks import ShardResult, ShardTask
from sdbatch.version import __version__

T = TypeVar("T")
# [render] settings recorded with every image: what the loaded model was run with.
MODEL_OPTIONS = ("offload", "quantize", "step_cache")
# Runs a shard's rendering phase where the device is, one shard at a time, and returns its value. Inline by
# default; an actor passes its device thread, so that one shard's writes and commit (waiting on storage)
# overlap the next shard's rendering.
OnDevice = Callable[[Callable[[], Any]], Any]


def inline(work: Callable[[], T]) -> T:
    return work()


@dataclass
class Rendering:
    """What one shard's rendering phase did on the device."""

    started: float = 0.0  # perf_counter when the device was this shard's: waiting for it is not the shard's time
    loads: tuple[int, int, int] = (0, 0, 0)  # model, LoRA and ControlNet loads
    scores: ShardScores | None = None  # the score steps' values of the images rendered; None: no steps


class Renderer:
    """Stateful: holds one warm pipeline; call render_shard many times. Usable in a plain loop."""

    def __init__(self, store: Store, settings: RendererSettings = RendererSettings()):
        set_cpu_threads(settings.cpu_threads)
        self.store = store
        self.settings = settings
        self.device, self.dtype = pick_device(settings.device, settings.fast.dtype)
        self.model_loads = 0
        self._model: LoadedModel | None = None
        self._variants: VariantCache | None = None  # LoRAs and ControlNets on the loaded model's pipeline
        self._earlier_loads = [0, 0]  # LoRA and ControlNet loads on pipelines since replaced
        self._schedulers: dict[str | None, object] = {}  # per scheduler name, for the loaded model
        # Rows per call per variant: the setting (or what fits), lowered for good when a batch runs out of memory.
        self._batch_limits: dict[tuple, int] = {}
        # Outlives model switches: a parsed LoRA does not depend on the pipeline it went into.
        self._state_dicts = StateDictCache(settings.variants.lora_cache_bytes)
        self._fetcher = Fetcher(settings.s3, settings.variants.fetch_timeout)
        self._embeddings = EmbeddingLibrary(settings.embedding_dir, settings.s3)  # outlives model switches too
        self._prompts: ConditioningCache | None = None  # the loaded model's text side
        self.uploads = Uploads(store, settings.io_threads)
        self.versions = json.dumps(versions(), sort_keys=True)
        self.scores = RenderScores(store, settings.score, self.device, settings.s3)

    def model(self, reference: str) -> LoadedModel:
        """The warm pipeline for a model, loading it (and freeing the previous one) on first use."""
        if self._model is None or self._model.reference != reference:
            if self._variants is not None:
                self._earlier_loads = [self.lora_loads, self.controlnet_loads]
            replacing = self._model is not None
            self._model, self._variants, self._prompts = None, None, None
            self._schedulers.clear()
            if replacing and self.settings.fast.compile:
                # Dynamo's caches and CUDA-graph pools are per process, not per UNet: they would keep the old
                # model's memory, and a few switches in exhaust the recompile limit (the UNet runs eager).
                torch._dynamo.reset()
            gc.collect()  # pipelines hold reference cycles (hooks, from_pipe siblings): free them before loading
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self._model = load_model(reference, self.device, self.dtype, self.settings.fast, self.settings.s3)
            self._variants = VariantCache(self._model.pipeline, self.device, self.dtype, self.settings.variants,
                                          self._state_dicts, self._fetcher, self.settings.fast, self._model.family)
            self._prompts = ConditioningCache(prompt_encoder(self._model, self._embeddings),
                                              self.settings.variants.prompt_cache_bytes)
            self.model_loads += 1
        return self._model

    @property
    def lora_loads(self) -> int:
        return self._earlier_loads[0] + (self._variants.loras.loads if self._variants else 0)

    @property
    def controlnet_loads(self) -> int:
        return self._earlier_loads[1] + (self._variants.controlnets.loads if self._variants else 0)

    def resident(self) -> dict[str, Any]:
        """What is warm here: the model, LoRA content hashes, ControlNets on the device and parked on the CPU."""
        if self._model is None:
            return {"model": None, "loras": [], "controlnets": {"device": [], "cpu": []}, "vaes": []}
        return {"model": self._model.reference, **self._variants.resident()}

    def render_rows(self, rows: list[dict[str, Any]]) -> Iterator[RenderedRow]:
        """Render rows in micro-batches of rows that share a variant (see _render_batch for failures)."""
        settings = self.settings.variants
        # Input images (control, init, mask) are fetched on a few threads from the start, so I/O overlaps the
        # first batches.
        images = Prefetcher(self._fetcher, image_uris(rows), settings.fetch_threads, settings.prefetch_images)
        try:
            for group in micro_batches(rows, self.batch_limit):
                yield from self._render_group(group, images)
        finally:
            images.close()

    def batch_limit(self, row: dict[str, Any]) -> int:
        """Rows per call for the row's variant: the setting, or what fits; halved for good after an OOM."""
        key = variant_key(row)
        if key not in self._batch_limits:
            size = _size(self.model(row["model"]), row)
            if row.get("hires_scale") is not None:  # the second pass, at the larger size, needs the memory
                size = calls.hires_size(row, size)
            self._batch_limits[key] = self.settings.batch_size or auto_batch_size(self.device, self.dtype, *size)
        return self._batch_limits[key]

    def _render_group(self, rows: list[dict[str, Any]], images: Prefetcher) -> list[RenderedRow]:
        """Prepare a micro-batch; rows whose input images or variant are unusable fail, the rest render."""
        model = self.model(rows[0]["model"])  # a model that cannot load fails the shard, not its rows
        size = _size(model, rows[0])
        bad, ready, inputs = [], [], []
        for row in rows:  # every row's images are taken, so the prefetcher's window moves on
            try:
                inputs.append(row_inputs(row, images, size))
            except InputUnavailable:
                raise  # may pass: the shard is retried rather than the row failed for good
            except Exception as exc:
                bad.append(failed(row, exc))
                continue
            ready.append(row)
        if not ready:
            return bad
        first = rows[0]
        try:
            variant = self._variants.activate(loras_of(first), controlnets_of(first), first.get("vae"),
                                              first.get("pipeline") or "txt2img", first.get("hires_scale") is not None)
        except InputUnavailable:
            raise
        except Exception as exc:  # a bad LoRA, ControlNet or VAE fails only the rows that use it
            return bad + [failed(row, exc) for row in ready]
        failures, batch = self._encode_prompts(Batch(ready, variant, inputs))
        return bad + failures + [out for part in batch.by_prompt_length() for out in self._render_batch(part)]

    def _encode_prompts(self, batch: Batch) -> tuple[list[RenderedRow], Batch]:
        """The rows' text states, after the variant (a LoRA may change the text encoder); a row whose prompt
        cannot be encoded (an unreadable embedding, a clip_skip the model lacks) fails alone."""
        with torch.inference_mode():
            # The LoRA set scopes the states: a LoRA may change the text encoders.
            states = self._prompts.encode(batch.rows, json.dumps(batch.variant.loras_used, sort_keys=True))
        failures = [failed(row, state) for row, state in zip(batch.rows, states) if isinstance(state, Exception)]
        keep = [n for n, state in enumerate(states) if not isinstance(state, Exception)]
        return failures, dataclasses.replace(batch, conditioning=states).pick(keep)

    def _render_batch(self, batch: Batch) -> list[RenderedRow]:
        """Out of memory: render the halves (down to one row) and keep the smaller size for the variant.
        Any other error: render row by row, so only the bad row fails."""
        started = time.perf_counter()
        try:
            images, (width, height), scheduler = self._call_pipeline(batch)
        except torch.OutOfMemoryError as exc:
            error, out_of_memory = exc, True
        except Exception as exc:
            error, out_of_memory = exc, False
        else:
            return self._rendered(batch, images, width, height, scheduler, time.perf_counter() - started)
        if len(batch.rows) == 1:
            return [failed(batch.rows[0], error, time.perf_counter() - started)]
        del error  # its traceback holds the failed call's frames, and with them its device memory
        parts = self._halve(batch) if out_of_memory else batch.split()
        return [out for part in parts for out in self._render_batch(part)]

    def _halve(self, batch: Batch) -> list[Batch]:
        halves = batch.halves()
        key = variant_key(batch.rows[0])
        self._batch_limits[key] = min(self._batch_limits.get(key, len(batch.rows)), len(halves[0].rows))
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # cached blocks shaped for the larger batch would fragment the retry
        return halves

    def _rendered(self, batch: Batch, images: list, width: int, height: int, scheduler: str,
                  seconds: float) -> list[RenderedRow]:
        """Each row's image, or its failure where its output came out non-finite."""
        share, variant = seconds / len(batch.rows), batch.variant
        return [failed(row, image, share) if isinstance(image, Exception) else
                RenderedRow(row, image, None, share, len(batch.rows), width, height, scheduler,
                            variant.loras_used, controlnets_used(row, variant, inputs.control_hashes),
                            variant.vae_hash, [{"name": name, "sha256": sha} for name, sha in text.embeddings_used],
                            {"init_image_sha256": inputs.init_sha256, "mask_image_sha256": inputs.mask_sha256},
                            variant.family.recorded(row))
                for row, image, inputs, text in zip(batch.rows, images, batch.inputs, batch.conditioning)]

    def _call_pipeline(self, batch: Batch):
        first = batch.rows[0]
        model = self.model(first["model"])
        name = first["scheduler"]
        if name not in self._schedulers:  # building one costs numpy work on every call otherwise
            self._schedulers[name] = make_scheduler(model, name)
        for pipe in (batch.variant.pipeline, batch.variant.second_pass):
            if pipe is not None:
                pipe.scheduler = self._schedulers[name]
        size = _size(model, first)
        with torch.inference_mode():
            if first.get("hires_scale") is None:
                images = calls.images_of(batch, calls.first_pass(batch, size), "the image", calls.steps_run)
            else:
                images = calls.hires(batch, size, self._second_pass)
        if first.get("pipeline") == "inpaint":
            images = calls.overlaid(batch, images)
        return images, calls.size_of(images), type(batch.variant.pipeline.scheduler).__name__

    def _second_pass(self, batch: Batch, first: Any, size: tuple[int, int]) -> list:
        """A hires batch's second pass over its first pass's finite rows (their latents, or decoded images); a
        method so that a test can keep the first pass."""
        return calls.second_pass(batch, first, size)

    def render_shard(self, task: ShardTask, on_device: OnDevice = inline) -> ShardResult:
        """Render the rows not yet in the store, write their images, commit the shard's metadata.
        `on_device` runs the rendering phase; the listing before it and the writes and commit after it run
        on the calling thread."""
        started = time.perf_counter()
        output = layout_named(task.layout).shard(task, self.store, self.uploads, self.provenance(ok=False))
        rows, phase = output.to_render(), Rendering()
        if rows is not None:
            on_device(lambda: self._rendering(rows, output, phase))
        out = output.finish()
        if out.committed and phase.scores is not None:
            self.scores.write(task, out.results, phase.scores, on_device)
        failures = {r["id"]: r["error"] for r in out.results if r["status"] == "failed"}
        model_loads, lora_loads, controlnet_loads = phase.loads
        return ShardResult(task.shard_id, task.attempt, out.committed, len(out.results) - len(failures),
                           len(failures), rendered=out.rendered, adopted=out.adopted,
                           seconds=time.perf_counter() - (phase.started or started), failures=failures,
                           model_loads=model_loads, lora_loads=lora_loads, controlnet_loads=controlnet_loads,
                           actor=self.settings.name, pipeline_seconds=out.pipeline_seconds, marker=out.marker)

    def _rendering(self, rows: list[dict[str, Any]], output, phase: Rendering) -> None:
        """A shard's rendering phase, noting when it got the device and the loads it made (counted here:
        another shard's rendering may follow while this one commits)."""
        def counts() -> tuple[int, int, int]:
            return self.model_loads, self.lora_loads, self.controlnet_loads

        phase.started, before = time.perf_counter(), counts()
        phase.scores = self.scores.begin()
        try:
            for rendered in self.render_rows(rows):
                output.add(rendered, self.provenance(rendered.ok))
                if phase.scores is not None and rendered.ok:
                    phase.scores.add(rendered.row, rendered.image)
            if phase.scores is not None:
                phase.scores.close()
        finally:
            phase.loads = tuple(after - b for after, b in zip(counts(), before))

    def provenance(self, ok: bool) -> dict[str, Any]:
        model = self._model
        return {"model_hash": model.model_hash if model and ok else None, "device": self.device_name(),
                "dtype": str(self.dtype).removeprefix("torch."), "versions": self.versions,
                "actor": self.settings.name, **{name: getattr(self.settings.fast, name) for name in MODEL_OPTIONS}}

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return f"cuda:{torch.cuda.current_device()} {torch.cuda.get_device_name()}"
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

    def close(self) -> None:
        self.uploads.close()


def prompt_encoder(model: LoadedModel, embeddings: EmbeddingLibrary) -> PromptEncoder | PipelinePrompts:
    """A1111's CLIP machinery where the family has it (ClipText), else the pipeline's own encoder."""
    if model.family.text(model.pipeline) is None:
        return PipelinePrompts(model.pipeline, model.family)
    return PromptEncoder(model.pipeline, embeddings, model.family)


def _size(model: LoadedModel, row: dict[str, Any]) -> tuple[int, int]:
    return int(row["width"] or model.native_size[0]), int(row["height"] or model.native_size[1])


def versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {"sdbatch": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}
