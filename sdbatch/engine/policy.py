"""Dispatch policy, pure (no Ray): which pending shard an actor should take, given what every actor holds."""

from __future__ import annotations

import collections
from typing import Iterable, Sequence

from sdbatch.plan import Shard, Variant

# How many recent variants the driver assumes an actor still has warm (LoRA adapters and
# ControlNets stay resident a while after their last shard; see the render caches).
HELD_VARIANTS = 4


class ShardQueue:
    """Pending shards. With affinity, an actor keeps to the variants it holds, and moves to the
    variant nobody else holds with the most work left; only when every remaining variant is held
    elsewhere does it join the one with the most work per holder. Without affinity: plan order."""

    def __init__(self, shards: Iterable[Shard], affinity: bool = True):
        self.affinity = affinity
        self.by_variant: dict[Variant, collections.deque[Shard]] = {}
        self.fifo: collections.deque[Shard] = collections.deque()
        for shard in shards:
            self._append(shard)

    def _append(self, shard: Shard) -> None:
        if self.affinity:
            self.by_variant.setdefault(shard.variant, collections.deque()).append(shard)
        else:
            self.fifo.append(shard)

    def __len__(self) -> int:
        return len(self.fifo) + sum(len(q) for q in self.by_variant.values())

    def requeue(self, shard: Shard) -> None:
        """A shard to retry goes first, so a failing shard is found out early, not at the end."""
        if self.affinity:
            self.by_variant.setdefault(shard.variant, collections.deque()).appendleft(shard)
        else:
            self.fifo.appendleft(shard)

    def next_for(self, held: Sequence[Variant], held_elsewhere: collections.Counter) -> Shard | None:
        """The shard for an actor that holds `held` (most recent last); None when nothing is left."""
        if not self.affinity:
            return self.fifo.popleft() if self.fifo else None
        for variant in reversed(held):
            if self.by_variant.get(variant):
                return self.by_variant[variant].popleft()
        waiting = [v for v, q in self.by_variant.items() if q]
        if not waiting:
            return None
        unclaimed = [v for v in waiting if not held_elsewhere[v]]
        # max() keeps the first of equals, so ties go to plan order: deterministic.
        chosen = max(unclaimed or waiting, key=lambda v: len(self.by_variant[v]) / (1 + held_elsewhere[v]))
        return self.by_variant[chosen].popleft()


def remember(held: list[Variant], variant: Variant) -> None:
    """Record that an actor was given a variant: most recent last, at most HELD_VARIANTS kept."""
    if variant in held:
        held.remove(variant)
    held.append(variant)
    del held[:-HELD_VARIANTS]
