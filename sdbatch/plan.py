"""Planning, pure and deterministic: normalized manifest -> variant groups -> shards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

# Rows that agree on these can share one pipeline call (prompts, negatives, seeds and control images
# may differ); for ControlNets only the model and scale count, each row brings its own image.
VARIANT_COLUMNS = ("model", "width", "height", "steps", "scheduler", "guidance_scale", "loras", "controlnets", "vae")


@dataclass(frozen=True)
class Variant:
    model: str
    width: int | None
    height: int | None
    steps: int
    scheduler: str | None
    guidance_scale: float
    loras: tuple[tuple[str, float], ...] = ()  # (path, weight), in the row's order
    controlnets: tuple[tuple[str, float], ...] = ()  # (model, scale)
    vae: str | None = None  # None: the model's own VAE

    def describe(self) -> str:
        size = f"{self.width or 'native'}x{self.height or 'native'}"
        text = (f"{self.model} {size} steps={self.steps} "
                f"scheduler={self.scheduler or 'model default'} cfg={self.guidance_scale:g}")
        text += "".join(f" lora={path.rsplit('/', 1)[-1]}:{weight:g}" for path, weight in self.loras)
        text += "".join(f" controlnet={m.rsplit('/', 1)[-1]}:{s:g}" for m, s in self.controlnets)
        return text + (f" vae={self.vae.rstrip('/').rsplit('/', 1)[-1]}" if self.vae else "")


def variant_of(row: dict[str, Any]) -> Variant:
    """The variant of a row dict (as sent to actors, or a manifest row)."""
    return Variant(row["model"], row["width"], row["height"], row["steps"], row["scheduler"],
                   row["guidance_scale"],
                   tuple((x["path"], x["weight"]) for x in row.get("loras") or ()),
                   tuple((x["model"], x["scale"]) for x in row.get("controlnets") or ()), row.get("vae"))


@dataclass(frozen=True)
class Shard:
    shard_id: str
    variant: Variant
    rows: tuple[int, ...]  # positions in the normalized manifest, in manifest order


@dataclass(frozen=True)
class Plan:
    shards: tuple[Shard, ...]
    rows_total: int

    def variants(self) -> dict[Variant, int]:
        counts: dict[Variant, int] = {}
        for shard in self.shards:
            counts[shard.variant] = counts.get(shard.variant, 0) + len(shard.rows)
        return counts

    def shard_of_rows(self) -> list[str]:
        out = [""] * self.rows_total
        for shard in self.shards:
            for row in shard.rows:
                out[row] = shard.shard_id
        return out


def variant_groups(table: pa.Table) -> dict[Variant, list[int]]:
    """Row positions grouped by variant, groups in order of first appearance."""
    groups: dict[Variant, list[int]] = {}
    # A table may lack a variant column (a manifest normalized by an earlier sdbatch version): row.get covers it.
    columns = [name for name in VARIANT_COLUMNS if name in table.column_names]
    for position, row in enumerate(table.select(columns).to_pylist()):
        groups.setdefault(variant_of(row), []).append(position)
    return groups


def plan_shards(table: pa.Table, shard_size: int) -> Plan:
    """Cut shards of at most shard_size rows inside each variant group; ids are global and stable."""
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    shards: list[Shard] = []
    for variant, positions in variant_groups(table).items():
        for start in range(0, len(positions), shard_size):
            chunk = tuple(positions[start:start + shard_size])
            shards.append(Shard(f"{len(shards):06d}", variant, chunk))
    return Plan(tuple(shards), table.num_rows)


def shard_rows(table: pa.Table, shard: Shard) -> list[dict[str, Any]]:
    """A shard's rows as small dicts to send to an actor: what it renders, plus the labels, which
    go into per-image records (the webdataset layout's {id}.json)."""
    columns = [name for name in table.column_names if name != "shard"]
    return table.select(columns).take(pa.array(shard.rows, pa.int64())).to_pylist()
