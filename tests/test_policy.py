"""The dispatch policy without Ray: affinity keeps variant switches near one per variant."""

import collections
import random

from sdbatch.engine.policy import HELD_VARIANTS, ShardQueue, remember
from sdbatch.plan import Shard, Variant


def _variant(n: int) -> Variant:
    return Variant("m", 64, 64, 2, None, 7.5, ((f"/loras/l{n}.safetensors", 1.0),), ())


def _shards(variants: int, per_variant: int, seed: int = 0) -> list[Shard]:
    shards = [Shard(f"{v:02d}-{k}", _variant(v), (0,)) for v in range(variants) for k in range(per_variant)]
    random.Random(seed).shuffle(shards)
    return shards


def _simulate(queue: ShardQueue, actors: int, durations: dict[str, float] | None = None) -> int:
    """Event-driven: each actor takes a shard when free; counts variant switches (loads)."""
    held = [[] for _ in range(actors)]
    clock = [0.0] * actors
    loads = 0
    while queue:
        actor = min(range(actors), key=lambda a: (clock[a], len(held[a])))
        elsewhere = collections.Counter(v for b in range(actors) if b != actor for v in held[b])
        shard = queue.next_for(held[actor], elsewhere)
        loads += shard.variant not in held[actor]
        remember(held[actor], shard.variant)
        clock[actor] += (durations or {}).get(shard.shard_id, 1.0)
    return loads


def test_affinity_loads_at_most_variants_plus_actors():
    for seed in range(5):
        shards = _shards(8, 5, seed)
        durations = {s.shard_id: random.Random(s.shard_id).uniform(0.5, 1.5) for s in shards}
        assert _simulate(ShardQueue(shards, affinity=True), 2, durations) <= 8 + 2


def test_without_affinity_actors_swap_far_more():
    shards = _shards(8, 5)
    with_affinity = _simulate(ShardQueue(shards, affinity=True), 2)
    without = _simulate(ShardQueue(shards, affinity=False), 2)
    assert without > 2 * with_affinity


def test_every_shard_is_handed_out_exactly_once():
    shards = _shards(5, 7)
    queue = ShardQueue(shards)
    seen = []
    held: list[Variant] = []
    while (shard := queue.next_for(held, collections.Counter())) is not None:
        seen.append(shard.shard_id)
        remember(held, shard.variant)
    assert sorted(seen) == sorted(s.shard_id for s in shards)


def test_a_requeued_shard_goes_first_and_new_variants_go_to_unclaimed_work():
    shards = _shards(3, 2)
    queue = ShardQueue(shards)
    first = queue.next_for([], collections.Counter())
    queue.requeue(first)
    assert queue.next_for([first.variant], collections.Counter()) == first
    other = queue.next_for([], collections.Counter({first.variant: 1}))
    assert other.variant != first.variant


def test_remember_keeps_the_most_recent_variants():
    held: list[Variant] = []
    for n in range(HELD_VARIANTS + 2):
        remember(held, _variant(n))
    remember(held, _variant(3))
    assert len(held) == HELD_VARIANTS and held[-1] == _variant(3) and _variant(0) not in held
