"""Micro-batches: which rows may share one pipeline call, and the per-row inputs diffusers takes for them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sdbatch.plan.shards import VARIANT_COLUMNS
from sdbatch.render.inputs import RowInputs
from sdbatch.render.text.encode import Conditioning
from sdbatch.render.variants.cache import ActiveVariant


@dataclass(frozen=True)
class Batch:
    """Rows for one pipeline call, with their variant made active and their control images decoded."""

    rows: list[dict[str, Any]]
    variant: ActiveVariant
    inputs: list[RowInputs] = field(default_factory=list)  # per row: its control, init and mask images
    conditioning: list[Conditioning] = field(default_factory=list)  # per row: its prompts' text-encoder states

    def split(self) -> list[Batch]:
        """One batch per row."""
        return [self._part(i, i + 1) for i in range(len(self.rows))]

    def halves(self) -> list[Batch]:
        """Two batches, the first one row larger when the count is odd."""
        middle = (len(self.rows) + 1) // 2
        return [self._part(0, middle), self._part(middle, len(self.rows))]

    def _part(self, start: int, stop: int) -> Batch:
        return Batch(self.rows[start:stop], self.variant, self.inputs[start:stop], self.conditioning[start:stop])

    def by_prompt_length(self) -> list[Batch]:
        """One batch per length of the rows' text states, in order of first appearance: prompts of different
        chunk counts cannot share a call, and padding one to the other's length would change its image."""
        groups: dict[int, list[int]] = {}
        for n, conditioning in enumerate(self.conditioning):
            groups.setdefault(conditioning.length, []).append(n)
        return [self.pick(picked) for picked in groups.values()]

    def pick(self, picked: list[int]) -> Batch:
        """The rows at these positions, in this order."""
        def at(values: list) -> list:
            return [values[n] for n in picked] if values else []

        return Batch(at(self.rows), self.variant, at(self.inputs), at(self.conditioning))


def micro_batches(rows: list[dict[str, Any]], size: int | Callable[[dict], int]) -> Iterator[list[dict[str, Any]]]:
    """Consecutive rows of one variant, at most `size` each. A callable size is asked as each batch fills,
    so a limit learned while rendering one batch (an out-of-memory split) applies to the next."""
    limit = size if callable(size) else (lambda _row: size)
    batch: list[dict[str, Any]] = []
    for row in rows:
        if batch and (len(batch) >= limit(batch[0]) or variant_key(row) != variant_key(batch[0])):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


def variant_key(row: dict[str, Any]) -> tuple:
    """What rows must share to go through one pipeline call: control images may differ, nothing else."""
    plain = tuple(row.get(name) for name in VARIANT_COLUMNS if name not in ("loras", "controlnets"))
    loras = tuple((str(x["path"]), float(x["weight"])) for x in loras_of(row))
    controlnets = tuple((str(x["model"]), float(x["scale"])) for x in controlnets_of(row))
    return plain + (loras, controlnets)


def loras_of(row: dict[str, Any]) -> list[dict]:
    return list(row.get("loras") or ())  # a row may lack the key: it then has no LoRAs


def controlnets_of(row: dict[str, Any]) -> list[dict]:
    return list(row.get("controlnets") or ())


def text_arguments(batch: Batch) -> dict[str, Any]:
    """The rows' prompt states as the model's family takes them (pooled vectors too where it has them)."""
    return batch.variant.family.text_arguments(batch.conditioning)


def control_arguments(batch: Batch, kind: str, images: list[list] | None = None) -> dict[str, Any]:
    """The rows' control images (`images`: per row, one per ControlNet; the decoded ones when None) and scales
    as the family's ControlNet pipeline of `kind` takes them."""
    if not batch.variant.controlnets:
        return {}
    images = images if images is not None else [list(x.controls) for x in batch.inputs]
    return batch.variant.family.control_arguments(kind, images, list(batch.variant.scales))


def controlnets_used(row: dict[str, Any], variant: ActiveVariant, digests: list[str]) -> list[dict]:
    return [{"model": str(c["model"]), "model_hash": net.model_hash, "image": str(c["image"]),
             "image_sha256": digest, "scale": float(c["scale"])}
            for c, net, digest in zip(controlnets_of(row), variant.controlnets, digests)]
