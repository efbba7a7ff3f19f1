"""Planning, pure and deterministic: normalized manifest chunks -> variant groups -> shards, rows in shard order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Rows that agree on these can share one pipeline call (prompts, negatives, seeds and control images
# may differ); for ControlNets only the model and scale count, each row brings its own image.
VARIANT_COLUMNS = ("model", "width", "height", "steps", "scheduler", "guidance_scale", "loras", "controlnets", "vae",
                   "pipeline", "strength", "hires_scale", "hires_steps", "hires_strength", "hires_upscaler",
                   "true_cfg_scale", "max_sequence_length")
# Rows planned together: variant groups and their shards are cut inside each chunk of this many manifest
# rows, so planning holds one chunk at a time. The run fingerprint hashes the manifest chunk by chunk too:
# a change here changes it, and a resume across the change is refused rather than planned differently.
PLAN_CHUNK_ROWS = 1 << 18
_SEPARATOR = "\x1f"
# What of a row's list entries makes its variant (a ControlNet's image does not: each row brings its own).
_LIST_FIELDS = {"loras": ("path", "weight"), "controlnets": ("model", "scale")}


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
    pipeline: str = "txt2img"  # or img2img, inpaint: from the row's init and mask images
    strength: float | None = None  # img2img and inpaint
    hires: Hires | None = None  # a second pass at a larger size
    true_cfg_scale: float | None = None  # FLUX's true CFG; None: off
    max_sequence_length: int | None = None  # T5 tokens; None: the family's default

    def describe(self) -> str:
        size = f"{self.width or 'native'}x{self.height or 'native'}"
        text = (f"{self.model} {size} steps={self.steps} "
                f"scheduler={self.scheduler or 'model default'} cfg={self.guidance_scale:g}")
        text += "".join(f" lora={path.rsplit('/', 1)[-1]}:{weight:g}" for path, weight in self.loras)
        text += "".join(f" controlnet={m.rsplit('/', 1)[-1]}:{s:g}" for m, s in self.controlnets)
        text += f" {self.pipeline} strength={self.strength:g}" if self.strength is not None else ""
        text += f" {self.hires.describe()}" if self.hires else ""
        text += f" true_cfg={self.true_cfg_scale:g}" if self.true_cfg_scale is not None else ""
        text += f" t5_tokens={self.max_sequence_length}" if self.max_sequence_length is not None else ""
        return text + (f" vae={self.vae.rstrip('/').rsplit('/', 1)[-1]}" if self.vae else "")

    def cost(self) -> float:
        """A row's rendering time relative to a text-to-image row of `steps` at the base size: img2img runs
        strength x steps; a hires pass adds its steps at scale^2 the pixels."""
        relative = self.strength if self.strength is not None else 1.0
        if self.hires:
            relative += self.hires.scale ** 2 * (self.hires.steps or self.steps) / self.steps
        return relative


@dataclass(frozen=True)
class Hires:
    scale: float
    steps: int | None  # None: the row's steps, as A1111's "Hires steps: 0"
    strength: float
    upscaler: str  # latent or image

    def describe(self) -> str:
        return (f"hires=x{self.scale:g} steps={self.steps or 'same'} strength={self.strength:g} "
                f"upscaler={self.upscaler}")


def variant_of(row: dict[str, Any]) -> Variant:
    """The variant of a row dict (as sent to actors, or a manifest row)."""
    hires = None
    if row.get("hires_scale") is not None:
        hires = Hires(row["hires_scale"], row.get("hires_steps"), row["hires_strength"], row["hires_upscaler"])
    return Variant(row["model"], row["width"], row["height"], row["steps"], row["scheduler"],
                   row["guidance_scale"],
                   tuple((x["path"], x["weight"]) for x in row.get("loras") or ()),
                   tuple((x["model"], x["scale"]) for x in row.get("controlnets") or ()), row.get("vae"),
                   row.get("pipeline") or "txt2img", row.get("strength"), hires, row.get("true_cfg_scale"),
                   row.get("max_sequence_length"))


@dataclass(frozen=True, slots=True)
class Shard:
    shard_id: str
    variant: Variant
    start: int  # its first row in the planned manifest, whose rows are in shard order
    size: int  # rows

    def work(self) -> float:
        """Its rendering time in text-to-image rows of its variant's steps and size."""
        return self.size * self.variant.cost()


@dataclass(frozen=True)
class Plan:
    shards: tuple[Shard, ...]
    rows_total: int

    def variants(self) -> dict[Variant, int]:
        counts: dict[Variant, int] = {}
        for shard in self.shards:
            counts[shard.variant] = counts.get(shard.variant, 0) + shard.size
        return counts


class Planner:
    """Chunks of a normalized manifest in, in order; each comes back as its rows in shard order with a
    `shard` column, and `plan()` holds one small record per shard. Shards are cut inside each chunk's
    variant groups (groups in order of first appearance); ids count up across chunks."""

    def __init__(self, shard_size: int) -> None:
        if shard_size < 1:
            raise ValueError("shard_size must be at least 1")
        self.shard_size = shard_size
        self.shards: list[Shard] = []
        self.rows = 0
        self._variants: dict[Variant, Variant] = {}  # one object per variant, shared by its shards

    def add(self, chunk: pa.Table) -> pa.Table:
        codes, variants = group_by_variant(chunk)
        order = np.argsort(codes, kind="stable")  # by group, manifest order inside each
        sizes = np.bincount(codes, minlength=len(variants))
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        ids, shard_sizes = [], []
        for variant, start, size in zip(variants, starts, sizes):
            variant = self._variants.setdefault(variant, variant)
            for offset in range(0, int(size), self.shard_size):
                shard = Shard(f"{len(self.shards):06d}", variant, self.rows + int(start) + offset,
                              min(self.shard_size, int(size) - offset))
                self.shards.append(shard)
                ids.append(shard.shard_id)
                shard_sizes.append(shard.size)
        self.rows += chunk.num_rows
        column = pa.array(np.repeat(np.array(ids, dtype=object), shard_sizes), pa.string())
        return chunk.take(pa.array(order)).append_column("shard", column)

    def plan(self) -> Plan:
        return Plan(tuple(self.shards), self.rows)


def group_by_variant(table: pa.Table) -> tuple[np.ndarray, list[Variant]]:
    """Each row's group (0, 1, ... in order of first appearance) and each group's variant. Arrow compares
    the columns that vary in this table; only rows that have LoRAs or ControlNets are written out one by one."""
    parts = []
    for name in _variant_columns(table):
        column = table.column(name)
        if name in _LIST_FIELDS:
            if pc.max(pc.list_value_length(column)).as_py():
                parts.append(_list_keys(column, _LIST_FIELDS[name]))
        elif _varies(column):
            parts.append(pc.cast(column, pa.string()))
    if not parts:
        codes = np.zeros(table.num_rows, dtype=np.int64)
    else:
        keys = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, _SEPARATOR, null_handling="replace",
                                                                           null_replacement="\x00")
        encoded = pc.dictionary_encode(keys, null_encoding="encode")
        encoded = encoded.combine_chunks() if isinstance(encoded, pa.ChunkedArray) else encoded
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    firsts = np.unique(codes, return_index=True)[1]
    rows = table.select(_variant_columns(table)).take(pa.array(firsts)).to_pylist()
    return codes, [variant_of(row) for row in rows]


def _varies(column: pa.ChunkedArray) -> bool:
    nulls = column.null_count
    if nulls == len(column):
        return False
    if nulls:
        return True
    low_high = pc.min_max(column)
    return low_high["min"] != low_high["max"]


def _list_keys(column: pa.ChunkedArray, fields: tuple[str, str]) -> pa.Array:
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    keys = np.full(len(column), "", dtype=object)
    listed = np.flatnonzero(lengths)
    if len(listed):
        values = column.take(pa.array(listed)).to_pylist()
        keys[listed] = [json.dumps([[entry[f] for f in fields] for entry in value]) for value in values]
    return pa.array(keys, pa.string())


def _variant_columns(table: pa.Table) -> list[str]:
    # A table may lack a variant column (a manifest normalized by an earlier sdbatch version).
    return [name for name in VARIANT_COLUMNS if name in table.column_names]


def plan_shards(table: pa.Table, shard_size: int, chunk_rows: int = PLAN_CHUNK_ROWS) -> tuple[Plan, pa.Table]:
    """The plan of a normalized manifest held in memory, and its rows in shard order (with `shard`)."""
    planner = Planner(shard_size)
    planned = [planner.add(table.slice(start, chunk_rows)) for start in range(0, table.num_rows, chunk_rows)]
    schema = table.schema.append(pa.field("shard", pa.string()))
    return planner.plan(), pa.concat_tables(planned) if planned else schema.empty_table()


def shard_rows(planned: pa.Table, shard: Shard) -> list[dict[str, Any]]:
    """A shard's rows of the planned manifest as small dicts to send to an actor: what it renders, plus
    the labels, which go into per-image records (the webdataset layout's {id}.json)."""
    rows = planned.slice(shard.start, shard.size)
    return rows.drop_columns(["shard"]).to_pylist() if "shard" in rows.column_names else rows.to_pylist()


def shards_except(shards: list[Shard], settled: pa.Array | pa.ChunkedArray) -> list[Shard]:
    """The shards whose ids are not in `settled`, in order. Arrow, not a set of strings: a run may have
    millions of shards, and a resume must not hold each id twice in Python."""
    skip = pc.is_in(pa.array([s.shard_id for s in shards], pa.string()), value_set=settled)
    return [shard for shard, settled_already in zip(shards, skip.to_pylist()) if not settled_already]
