"""The affinity rule as a plain scan (no heaps, no holder counts): the oracle ShardQueue.take is checked against."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence

from sdbatch.plan.shards import Shard, Variant


class RuleQueue:
    """Pending shards with the policy stated directly: an actor keeps to the variants it holds (most recent
    first); else, among its current model's variants while any have work (else among all), the variant
    nobody else holds (of a model nobody else has loaded first) with the most work, else the most work per
    holder; ties in plan order. Without
    affinity: plan order. A requeued shard goes first."""

    def __init__(self, shards: Iterable[Shard], affinity: bool = True):
        self.affinity = affinity
        self.waiting: dict[Variant, collections.deque[Shard]] = {}
        self.rank: dict[Variant, int] = {}  # plan order of first appearance
        self.fifo: collections.deque[Shard] = collections.deque()
        for shard in shards:
            self._add(shard, left=False)

    def _add(self, shard: Shard, left: bool) -> None:
        if not self.affinity:
            (self.fifo.appendleft if left else self.fifo.append)(shard)
            return
        self.rank.setdefault(shard.variant, len(self.rank))
        queue = self.waiting.setdefault(shard.variant, collections.deque())
        (queue.appendleft if left else queue.append)(shard)

    def __len__(self) -> int:
        return len(self.fifo) + sum(len(q) for q in self.waiting.values())

    def requeue(self, shard: Shard) -> None:
        self._add(shard, left=True)

    def next_for(self, held: Sequence[Variant], held_elsewhere: Mapping[Variant, int],
                 model: str | None = None, loaded_elsewhere: Mapping[str, int] | None = None) -> Shard | None:
        """`held`: the actor's variants, most recent last; `held_elsewhere[v]`: how many other actors hold v;
        `model`: the actor's loaded model when it holds no variant yet; `loaded_elsewhere[m]`: how many other
        actors have model m loaded."""
        if not self.affinity:
            return self.fifo.popleft() if self.fifo else None
        for variant in reversed(held):
            if variant in self.waiting:
                return self._pop(variant)
        if not self.waiting:
            return None
        current = held[-1].model if held else model
        same_model = [v for v in self.waiting if v.model == current]

        def key(variant: Variant) -> tuple[bool, bool, float, int]:
            others = held_elsewhere.get(variant, 0)
            model_elsewhere = (loaded_elsewhere or {}).get(variant.model, 0)
            return not others, not model_elsewhere, len(self.waiting[variant]) / (1 + others), -self.rank[variant]

        return self._pop(max(same_model or self.waiting, key=key))

    def _pop(self, variant: Variant) -> Shard:
        queue = self.waiting[variant]
        shard = queue.popleft()
        if not queue:
            del self.waiting[variant]
        return shard
