"""Dispatch policy, pure (no Ray): which pending shard an actor should take, given what every actor holds.

Cost per dispatch does not grow with the number of actors: `Holdings` keeps each variant's holder count
up to date as `remember` adds and evicts (no recount of every actor's list), and `ShardQueue.take` costs
O(HELD_VARIANTS) while an actor keeps to what it holds, O(log variants) amortized when it moves on.
`fill` is the dispatch rule the Dispatcher, the estimate and bench/scheduler.py share.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence

from sdbatch.plan.shards import Shard, Variant

# How many recent variants the driver assumes an actor still has warm (LoRA adapters and
# ControlNets stay resident a while after their last shard; see the render caches).
HELD_VARIANTS = 4


def remember(held: list[Variant], variant: Variant) -> None:
    """Record that an actor was given a variant: most recent last, at most HELD_VARIANTS kept. Another model
    replaces the pipeline, and with it every LoRA and ControlNet: the actor then holds only the new variant."""
    if held and held[-1].model != variant.model:
        held.clear()
    if variant in held:
        held.remove(variant)
    held.append(variant)
    del held[:-HELD_VARIANTS]


def depth(pending: int, actors: int, in_flight: int) -> int:
    """How many shards an actor may have queued: `in_flight` while there is a pending shard for every
    actor; 1 near the end, so the last shards go to idle actors instead of waiting behind busy ones."""
    return in_flight if pending >= actors else 1


class Holdings:
    """What each actor holds (its `remember` list) and how many actors hold each variant.

    The counts change only where `give` adds or evicts a variant and where `forget` drops an actor, so
    "how many others hold v" is a lookup, not a recount of every actor's list on every dispatch.
    Actors are any hashable key (the Dispatcher uses the actor's name).
    """

    def __init__(self) -> None:
        self._held: dict[Hashable, list[Variant]] = {}
        self._holders: dict[Variant, int] = {}
        self._warm: dict[Hashable, str] = {}  # the model an actor loaded before its first shard
        self._model_holders: collections.Counter[str] = collections.Counter()  # actors per loaded model
        self._released: list[Callable[[Variant], None]] = []

    def on_release(self, callback: Callable[[Variant], None]) -> None:
        """Call `callback(variant)` whenever a variant loses a holder (evicted, or its actor forgotten)."""
        self._released.append(callback)

    def held(self, actor: Hashable) -> Sequence[Variant]:
        """The actor's variants, most recent last (read-only: change it through `give`)."""
        return self._held.get(actor, ())

    def model(self, actor: Hashable) -> str | None:
        """The model the actor has loaded: its latest variant's, else the one it warmed up with."""
        held = self._held.get(actor)
        return held[-1].model if held else self._warm.get(actor)

    def warm(self, actor: Hashable, model: str) -> None:
        """The actor loaded `model` before taking any shard (the Dispatcher's warm-up)."""
        before = self.model(actor)
        self._warm[actor] = model
        self._count_model(before, self.model(actor))

    def model_holders(self, model: str) -> int:
        """How many actors have `model` loaded."""
        return self._model_holders[model]

    def _count_model(self, before: str | None, after: str | None) -> None:
        if before == after:
            return
        if before is not None:
            self._model_holders[before] -= 1
            if not self._model_holders[before]:
                del self._model_holders[before]
        if after is not None:
            self._model_holders[after] += 1

    def holders(self, variant: Variant) -> int:
        """How many actors hold the variant."""
        return self._holders.get(variant, 0)

    def give(self, actor: Hashable, variant: Variant) -> None:
        """The actor was given a shard of `variant`: `remember` it and update the counts it changes."""
        self._count_model(self.model(actor), variant.model)
        held = self._held.setdefault(actor, [])
        if variant in held:
            remember(held, variant)  # only its position changes
            return
        if held and held[-1].model != variant.model:
            evicted = list(held)  # a model switch drops every LoRA and ControlNet with the old pipeline
        else:
            evicted = held[:1] if len(held) >= HELD_VARIANTS else []
        remember(held, variant)
        self._holders[variant] = self._holders.get(variant, 0) + 1
        for old in evicted:
            self._drop(old)

    def forget(self, actor: Hashable) -> None:
        """The actor is gone (lost or replaced): it holds nothing any more."""
        self._count_model(self.model(actor), None)
        self._warm.pop(actor, None)
        for variant in self._held.pop(actor, ()):
            self._drop(variant)

    def reload(self, actor: Hashable, queued: Iterable[Variant]) -> None:
        """A load failed on the actor, which left it holding nothing: from now on it holds what the shards
        still queued on it load, in their order."""
        self.forget(actor)
        for variant in queued:
            self.give(actor, variant)

    def _drop(self, variant: Variant) -> None:
        left = self._holders[variant] - 1
        if left:
            self._holders[variant] = left
        else:
            del self._holders[variant]
        for callback in self._released:
            callback(variant)


class ShardQueue:
    """Pending shards. With affinity, an actor keeps to the variants it holds, and moves to the
    variant nobody else holds with the most work left; only when every remaining variant is held
    elsewhere does it join the one with the most work per holder. The model comes first: that choice is
    made among the variants of the actor's current model while it has any left, since a model switch
    costs far more than a LoRA or ControlNet. Without affinity: plan order.

    `take` picks in O(log variants): a heap of per-variant priorities, each entry an upper bound of its
    variant's current priority (work only shrinks, holders only grow, except where a requeue or a release
    pushes a fresh entry). tests/support/policy_rule.py states the same rule as a plain scan, to check it.
    """

    def __init__(self, shards: Iterable[Shard], affinity: bool = True, holdings: Holdings | None = None):
        self.affinity = affinity
        self.holdings = holdings
        self.by_variant: dict[Variant, collections.deque[Shard]] = {}
        self.fifo: collections.deque[Shard] = collections.deque()
        self._rank: dict[Variant, int] = {}  # plan order of first appearance: ties go to the earliest
        self._waiting: dict[Variant, collections.deque[Shard]] = {}  # only the variants with shards left
        self._size = 0
        # Per model: (claimed, -work per holder, rank, sequence, variant); min first.
        self._heaps: dict[str, list[tuple]] = {}
        self._sequence = itertools.count()
        for shard in shards:
            self._add(shard, left=False)
        if holdings is not None and affinity:
            for variant in self._waiting:
                self._push(variant)
            holdings.on_release(self._push)

    def _add(self, shard: Shard, left: bool) -> None:
        self._size += 1
        if not self.affinity:
            (self.fifo.appendleft if left else self.fifo.append)(shard)
            return
        variant = shard.variant
        queue = self.by_variant.get(variant)
        if queue is None:
            queue = self.by_variant[variant] = collections.deque()
            self._rank[variant] = len(self._rank)
        (queue.appendleft if left else queue.append)(shard)
        self._waiting[variant] = queue

    def _pop(self, variant: Variant) -> Shard:
        queue = self._waiting[variant]
        shard = queue.popleft()
        if not queue:
            del self._waiting[variant]
        self._size -= 1
        return shard

    def __len__(self) -> int:
        return self._size

    def requeue(self, shard: Shard) -> None:
        """A shard to retry goes first, so a failing shard is found out early, not at the end."""
        self._add(shard, left=True)
        if self.holdings is not None:
            self._push(shard.variant)

    def drop_model(self, model: str) -> list[Shard]:
        """Take out every waiting shard of `model` (it cannot be loaded, so none of them can render)."""
        if not self.affinity:
            dropped = [s for s in self.fifo if s.variant.model == model]
            self.fifo = collections.deque(s for s in self.fifo if s.variant.model != model)
        else:
            dropped = []
            for variant in [v for v in self._waiting if v.model == model]:
                queue = self._waiting.pop(variant)  # its heap entries go stale and are dropped on the way
                dropped.extend(queue)
                queue.clear()
        self._size -= len(dropped)
        return dropped

    def take(self, actor: Hashable) -> Shard | None:
        """The shard for this actor as the queue's `holdings` see it, recorded there; O(HELD_VARIANTS) while
        the actor keeps to what it holds, O(log variants) amortized when it moves to another variant."""
        holdings = self.holdings
        if holdings is None:
            raise ValueError("take() needs the ShardQueue built with holdings")
        if not self.affinity:
            shard = self._next_in_order()
        else:
            shard = None
            for variant in reversed(holdings.held(actor)):
                if variant in self._waiting:
                    shard = self._pop(variant)
                    break
            else:
                # The actor's own variants have no work left, so for every waiting variant "held
                # elsewhere" is simply its holder count.
                shard = self._best(holdings.model(actor))
        if shard is not None:
            holdings.give(actor, shard.variant)
        return shard

    def next_model(self) -> str | None:
        """The model of the work a cold actor would be given first (None when nothing waits): what a
        replacement actor should load while it starts."""
        if not self.affinity:
            return self.fifo[0].variant.model if self.fifo else None
        if self.holdings is None:
            return max(self._waiting, key=lambda v: (len(self._waiting[v]), -self._rank[v])).model \
                if self._waiting else None
        top = self._best_elsewhere()
        return None if top is None else top[-1].model

    def _next_in_order(self) -> Shard | None:
        if not self.fifo:
            return None
        self._size -= 1
        return self.fifo.popleft()

    def _priority(self, variant: Variant) -> tuple[bool, float, int]:
        holders = self.holdings.holders(variant)
        return holders > 0, -(len(self._waiting[variant]) / (1 + holders)), self._rank[variant]

    def _push(self, variant: Variant) -> None:
        if variant in self._waiting:
            heap = self._heaps.setdefault(variant.model, [])
            heapq.heappush(heap, (*self._priority(variant), next(self._sequence), variant))

    def _best(self, model: str | None) -> Shard | None:
        """The best variant of `model` while it has work, else the best of all (one heap top per model)."""
        top = self._top(self._heaps.get(model, [])) or self._best_elsewhere()
        return None if top is None else self._pop(top[-1])  # its entry stays: an upper bound from now on

    def _best_elsewhere(self) -> tuple | None:
        """The best heap top over every model. Among variants nobody holds, one of a model nobody has loaded
        comes first: joining another actor's model would split that model's variants between two actors,
        and each would then load another model sooner."""
        tops = [t for heap in self._heaps.values() if (t := self._top(heap)) is not None]
        if not tops:
            return None
        holders = self.holdings.model_holders
        return min(tops, key=lambda entry: (entry[0], holders(entry[-1].model) > 0, *entry[1:3]))  # ranks differ

    def _top(self, heap: list[tuple]) -> tuple | None:
        """The heap's best entry with its current priority, stale entries dropped or refreshed on the way."""
        while heap:
            entry = heap[0]
            variant = entry[-1]
            if variant not in self._waiting:
                heapq.heappop(heap)
                continue
            current = self._priority(variant)
            if current == entry[:3]:
                return entry
            heapq.heapreplace(heap, (*current, next(self._sequence), variant))
        return None


def fill(queue: ShardQueue, queued: Mapping[Hashable, int], ready: int, in_flight: int) -> list[tuple[Hashable, Shard]]:
    """The one dispatch rule: which shards go to which actors now. `queued`: the shards each actor with room
    has queued, in slot order; `ready`: how many actors are warm in all. Actors holding the fewest variants
    choose first, so new variants go where little is warm; each is topped up to `depth`. The Dispatcher,
    `sdbatch plan` and bench/scheduler.py all hand out shards through this function."""
    holdings = queue.holdings
    sent: list[tuple[Hashable, Shard]] = []
    for actor in sorted(queued, key=lambda a: len(holdings.held(a))):
        count = queued[actor]
        while queue and count < depth(len(queue), ready, in_flight):
            sent.append((actor, queue.take(actor)))
            count += 1
    return sent
