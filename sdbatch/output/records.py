"""A rendered row and the result-table row it becomes (provenance, timings, errors)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sdbatch.a1111.parameters import format_parameters
from sdbatch.errors import VariantError
from sdbatch.tasks import ShardTask
from sdbatch.version import __version__

MAX_ERROR_CHARS = 1000


@dataclass(frozen=True)
class RenderedRow:
    row: dict[str, Any]
    image: Any  # PIL image; None when the row failed, and once the image has been handed to the uploads
    error: str | None
    seconds: float
    batch_size: int
    width: int
    height: int
    scheduler_class: str | None = None
    loras_used: list[dict] | None = None  # provenance of an image; None when the row failed
    controlnets_used: list[dict] | None = None
    vae_hash: str | None = None  # the row's override VAE, by content; None: the model's own VAE
    embeddings_used: list[dict] | None = None  # textual inversion files the prompts used: name, sha256
    sources: dict | None = None  # init_image_sha256, mask_image_sha256 (None where the row has none)
    recorded: dict | None = None  # what the model's family resolved: family, max_sequence_length, true_cfg_scale

    @property
    def ok(self) -> bool:
        return self.error is None


def failed(row: dict[str, Any], exc: BaseException, seconds: float = 0.0) -> RenderedRow:
    return RenderedRow(row, None, describe(exc), seconds, 1, 0, 0)


def describe(exc: BaseException) -> str:
    # VariantError messages already name the input and the cause; other types need their name.
    text = str(exc) if isinstance(exc, VariantError) else f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR_CHARS]


def base_row(task: ShardTask, row: dict) -> dict:
    return {"id": row["id"], "shard": task.shard_id, "attempt": task.attempt, "seed": row["seed"],
            "steps": row["steps"], "guidance_scale": row["guidance_scale"], "scheduler": row["scheduler"],
            "model": row["model"], "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def result_row(task: ShardTask, rendered: RenderedRow, image: str | None, provenance: dict[str, Any]) -> dict:
    """The result-table row of a rendered (or failed) row; provenance: model_hash, device, dtype, versions, actor.
    `adopted` is False here: the caller sets it once the write says whose image the key holds."""
    row, ok = rendered.row, rendered.ok
    return {
        **base_row(task, row), **provenance, "image": image if ok else None, "status": "ok" if ok else "failed",
        "error": rendered.error, "width": rendered.width or row["width"],
        "height": rendered.height or row["height"], "scheduler_class": rendered.scheduler_class,
        "render_seconds": rendered.seconds, "batch_size": rendered.batch_size,
        "loras_used": rendered.loras_used, "controlnets_used": rendered.controlnets_used,
        "vae_hash": rendered.vae_hash, "embeddings_used": rendered.embeddings_used, "adopted": False,
        **(rendered.sources or {}), **(rendered.recorded or {}),
    }


def failed_row(task: ShardTask, row: dict, error: str, provenance: dict[str, Any]) -> dict:
    """A row recorded as failed without being rendered here (its attempt's error is all we know)."""
    return result_row(task, RenderedRow(row, None, error[:MAX_ERROR_CHARS], 0.0, 1, 0, 0), None, provenance)


def image_parameters(row: dict[str, Any], result: dict[str, Any]) -> str:
    """The A1111 `parameters` text embedded in the row's image: what was asked, and what was used."""
    return format_parameters({**row, **result, "sdbatch_version": __version__})


def sample_record(row: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The full result row of the webdataset layout's {id}.json: every manifest column (labels too), then results."""
    return {**row, **result}


def adopted_row(task: ShardTask, row: dict, key: str, provenance: dict[str, Any]) -> dict:
    # Written by an attempt that died before committing: its device and timing are unknown.
    return {**base_row(task, row), "image": key, "status": "ok", "error": None,
            "width": row["width"], "height": row["height"], "versions": provenance["versions"],
            "actor": provenance["actor"], "adopted": True}
