"""Messages between the driver and the actors: small, picklable, no pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ShardTask:
    """One shard to render: its rows (render columns only) and how to encode them."""

    shard_id: str
    attempt: str
    rows: tuple[dict[str, Any], ...]
    image_format: str
    quality: int
    layout: str = "files"  # the job's output.layout: a name in sdbatch/output/layouts/


@dataclass(frozen=True)
class ShardResult:
    """What an actor reports for a shard; the images and metadata are already in the store."""

    shard_id: str
    attempt: str
    committed: bool  # False: another attempt committed this shard first; its results stand
    rows_ok: int
    rows_failed: int
    rendered: int  # rows rendered by this attempt
    adopted: int  # rows whose image an earlier attempt had already written
    seconds: float
    failures: dict[str, str] = field(default_factory=dict)  # row id -> error
    model_loads: int = 0
    lora_loads: int = 0  # LoRA files loaded into the pipeline by this shard (cache hits are not loads)
    controlnet_loads: int = 0  # ControlNet models loaded (from disk, or moved back from CPU) by this shard
    actor: str = ""
    # The rendered rows' time inside pipeline calls (each row its share of its batch), as the gallery's
    # GPU-hours count it: what the summary at the end of submit reports.
    pipeline_seconds: float = 0.0
    # The shard's marker as it stands in the store, so the driver can index it without reading it back.
    marker: dict[str, Any] | None = None
