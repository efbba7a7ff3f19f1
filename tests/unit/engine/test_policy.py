"""The dispatch policy without Ray: affinity keeps variant switches near one per variant."""

import collections
import random

import pytest

from sdbatch.engine.policy import HELD_VARIANTS, Holdings, ShardQueue, fill, remember
from sdbatch.plan.shards import Shard, Variant
from tests.support.policy_rule import RuleQueue


def _variant(n: int) -> Variant:
    return Variant("m", 64, 64, 2, None, 7.5, ((f"/loras/l{n}.safetensors", 1.0),), ())


def _shards(variants: int, per_variant: int, seed: int = 0) -> list[Shard]:
    shards = [Shard(f"{v:02d}-{k}", _variant(v), 0, 1) for v in range(variants) for k in range(per_variant)]
    random.Random(seed).shuffle(shards)
    return shards


def _simulate(shards: list[Shard], affinity: bool, actors: int, durations: dict[str, float] | None = None) -> int:
    """Event-driven: each actor takes a shard when free; counts variant switches (loads)."""
    queue = ShardQueue(shards, affinity, Holdings())
    held = [[] for _ in range(actors)]
    clock = [0.0] * actors
    loads = 0
    while queue:
        actor = min(range(actors), key=lambda a: (clock[a], len(held[a])))
        shard = queue.take(actor)
        loads += shard.variant not in held[actor]
        remember(held[actor], shard.variant)
        clock[actor] += (durations or {}).get(shard.shard_id, 1.0)
    return loads


def test_affinity_loads_at_most_variants_plus_actors():
    for seed in range(5):
        shards = _shards(8, 5, seed)
        durations = {s.shard_id: random.Random(s.shard_id).uniform(0.5, 1.5) for s in shards}
        assert _simulate(shards, True, 2, durations) <= 8 + 2


def test_without_affinity_actors_swap_far_more():
    shards = _shards(8, 5)
    with_affinity = _simulate(shards, True, 2)
    without = _simulate(shards, False, 2)
    assert without > 2 * with_affinity


def test_every_shard_is_handed_out_exactly_once():
    shards = _shards(5, 7)
    queue = ShardQueue(shards, holdings=Holdings())
    seen = []
    while (shard := queue.take("a")) is not None:
        seen.append(shard.shard_id)
    assert sorted(seen) == sorted(s.shard_id for s in shards)


def test_a_requeued_shard_goes_first_and_new_variants_go_to_unclaimed_work():
    shards = _shards(3, 2)
    queue = ShardQueue(shards, holdings=Holdings())
    first = queue.take("a")
    queue.requeue(first)
    assert queue.take("a") == first  # "a" holds its variant: the requeued shard is its next
    other = queue.take("b")  # holds nothing, and first's variant is held by "a"
    assert other.variant != first.variant


def test_remember_keeps_the_most_recent_variants():
    held: list[Variant] = []
    for n in range(HELD_VARIANTS + 2):
        remember(held, _variant(n))
    remember(held, _variant(3))
    assert len(held) == HELD_VARIANTS and held[-1] == _variant(3) and _variant(0) not in held


def _recount(holdings: Holdings, actors) -> collections.Counter:
    return collections.Counter(v for actor in actors for v in holdings.held(actor))


def _counts(holdings: Holdings, variants) -> dict[Variant, int]:
    return {v: holdings.holders(v) for v in variants if holdings.holders(v)}


def test_holder_counts_match_a_recount_after_random_gives_and_forgets():
    rng = random.Random(7)
    variants = [_variant(n) for n in range(12)]
    holdings = Holdings()
    actors = list(range(20))
    for _ in range(3000):
        actor = rng.choice(actors)
        if rng.random() < 0.05:
            holdings.forget(actor)
        else:
            holdings.give(actor, rng.choice(variants))
        assert _counts(holdings, variants) == _recount(holdings, actors)
        assert len(holdings.held(actor)) <= HELD_VARIANTS
    for actor in actors:  # what take() reads as "held elsewhere": everyone's count but the actor's own
        expected = _recount(holdings, [a for a in actors if a != actor])
        view = {v: holdings.holders(v) - (v in holdings.held(actor)) for v in variants}
        assert view == {v: expected[v] for v in variants}


def test_give_keeps_the_same_order_as_remember():
    rng = random.Random(1)
    holdings, plain = Holdings(), []
    for _ in range(200):
        variant = _variant(rng.randrange(7))
        holdings.give("a", variant)
        remember(plain, variant)
        assert list(holdings.held("a")) == plain


def test_holdings_report_releases():
    holdings, released = Holdings(), []
    holdings.on_release(released.append)
    for n in range(HELD_VARIANTS + 1):
        holdings.give("a", _variant(n))
    assert released == [_variant(0)]
    holdings.give("b", _variant(1))
    holdings.forget("a")
    assert sorted(released, key=str) == sorted([_variant(n) for n in range(HELD_VARIANTS + 1)], key=str)
    assert _counts(holdings, [_variant(n) for n in range(HELD_VARIANTS + 1)]) == {_variant(1): 1}


@pytest.mark.parametrize("seed", range(6))
def test_take_picks_what_the_rule_picks_with_a_recount(seed):
    """The Dispatcher's fast path (take: holder counts, a heap) against the rule stated as a plain scan
    (tests/support/policy_rule.py, a recount of every other actor's holdings), through requeues and lost actors."""
    rng = random.Random(seed)
    shards = [Shard(f"{v:02d}-{k}", _variant(v), 0, 1) for v in range(rng.randrange(1, 30))
              for k in range(rng.randrange(1, 12))]
    rng.shuffle(shards)
    holdings = Holdings()
    fast, reference = ShardQueue(shards, holdings=holdings), RuleQueue(shards)
    held = collections.defaultdict(list)  # the reference's own bookkeeping: a list per actor
    actors = list(range(rng.randrange(1, 10)))
    while fast:
        actor = rng.choice(actors)
        if rng.random() < 0.03:  # actor lost: its holdings are forgotten
            holdings.forget(actor)
            held.pop(actor, None)
            continue
        elsewhere = collections.Counter(v for other, vs in held.items() if other != actor for v in vs)
        loaded = collections.Counter(vs[-1].model for other, vs in held.items() if other != actor and vs)
        expected = reference.next_for(held[actor], elsewhere, loaded_elsewhere=loaded)
        remember(held[actor], expected.variant)
        got = fast.take(actor)
        assert got == expected
        assert len(fast) == len(reference)
        if rng.random() < 0.05:  # a failed shard comes back first
            fast.requeue(got)
            reference.requeue(expected)
    assert reference.next_for([], collections.Counter()) is None and fast.take(0) is None


def test_take_without_affinity_is_plan_order_and_still_records_holdings():
    shards = _shards(3, 2)
    holdings = Holdings()
    queue = ShardQueue(shards, affinity=False, holdings=holdings)
    taken = [queue.take(k % 2) for k in range(len(shards))]
    assert taken == shards and queue.take(0) is None and len(queue) == 0
    assert _counts(holdings, {s.variant for s in shards}) == _recount(holdings, [0, 1])


def test_take_needs_holdings():
    with pytest.raises(ValueError):
        ShardQueue(_shards(1, 1)).take("a")


def _model_variant(model: int, n: int) -> Variant:
    return Variant(f"model{model}", 64, 64, 2, None, 7.5, ((f"/loras/l{n}.safetensors", 1.0),), ())


@pytest.mark.parametrize("seed", range(4))
def test_model_is_the_first_level_of_affinity(seed):
    """LoRA variants over three models: an actor leaves a model only once it has no work left, so it never
    comes back to it (model loads, warm-up included, at most actors x models); take agrees with the rule."""
    rng = random.Random(seed)
    shards = [Shard(f"{m}-{v}-{k}", _model_variant(m, v), 0, 1) for m in range(3) for v in range(4) for k in range(3)]
    rng.shuffle(shards)
    actors = list(range(rng.randrange(2, 4)))
    holdings = Holdings()
    fast, reference = ShardQueue(shards, holdings=holdings), RuleQueue(shards)
    held = {a: [] for a in actors}
    visited = {a: [shards[0].variant.model] for a in actors}  # every actor warms up with the first shard's model
    for a in actors:
        holdings.warm(a, visited[a][-1])
    while fast:
        actor = rng.choice(actors)
        elsewhere = collections.Counter(v for other, vs in held.items() if other != actor for v in vs)
        loaded = collections.Counter(visited[other][-1] for other in actors if other != actor)
        expected = reference.next_for(held[actor], elsewhere, model=visited[actor][-1], loaded_elsewhere=loaded)
        remember(held[actor], expected.variant)
        assert fast.take(actor) == expected
        if expected.variant.model != visited[actor][-1]:
            assert expected.variant.model not in visited[actor], "an actor went back to a model it had left"
            visited[actor].append(expected.variant.model)
        assert all(v.model == visited[actor][-1] for v in holdings.held(actor))  # a switch drops the old LoRAs
    assert sum(len(v) for v in visited.values()) <= 3 * len(actors)


def test_two_models_two_actors_load_each_model_once_per_actor_at_most():
    shards = [Shard(f"{m}-{v}-{k}", _model_variant(m, v), 0, 1) for m in range(2) for v in range(3) for k in range(4)]
    random.Random(3).shuffle(shards)
    holdings = Holdings()
    queue = ShardQueue(shards, holdings=holdings)
    models = dict.fromkeys((0, 1), shards[0].variant.model)
    for a, model in models.items():
        holdings.warm(a, model)
    loads, actor = 2, 0
    while (shard := queue.take(actor)) is not None:
        loads += shard.variant.model != models[actor]
        models[actor] = shard.variant.model
        actor = 1 - actor
    assert loads <= 2 + 2


def test_next_model_is_the_model_of_what_a_cold_actor_takes_first():
    """What a replacement actor warms: the work left, not the run's first model."""
    shards = [Shard(f"{m}-{v}-{k}", _model_variant(m, v), 0, 1) for m in range(3) for v in range(2) for k in range(3)]
    random.Random(5).shuffle(shards)
    holdings = Holdings()
    queue = ShardQueue(shards, holdings=holdings)
    while queue:
        expected = queue.next_model()
        assert queue.take(f"cold-{len(queue)}").variant.model == expected  # a new actor each time: cold
    assert queue.next_model() is None
    in_order = ShardQueue(shards, affinity=False)
    assert in_order.next_model() == shards[0].variant.model
    in_order.requeue(shards[-1])
    assert in_order.next_model() == shards[-1].variant.model


@pytest.mark.parametrize("affinity", [True, False])
def test_drop_model_takes_out_every_waiting_shard_of_that_model_and_nothing_else(affinity):
    """What the dispatcher gives up when a model cannot be loaded: all of its shards, none of another's."""
    shards = [Shard(f"{m}-{v}-{k}", _model_variant(m, v), 0, 1) for m in range(3) for v in range(2) for k in range(3)]
    random.Random(7).shuffle(shards)
    holdings = Holdings()
    queue = ShardQueue(shards, affinity=affinity, holdings=holdings)
    first = queue.take("a")  # its variant is now held, and has heap entries that go stale
    queue.requeue(first)  # came back failed: retried first
    bad = first.variant.model
    dropped = queue.drop_model(bad)
    assert sorted(s.shard_id for s in dropped) == sorted(s.shard_id for s in shards if s.variant.model == bad)
    assert queue.next_model() != bad
    left = []
    while (shard := queue.take("b" if len(left) % 2 else "a")) is not None:
        left.append(shard)
    assert len(queue) == 0 and queue.next_model() is None
    assert sorted(s.shard_id for s in left) == sorted(s.shard_id for s in shards if s.variant.model != bad)


def test_fill_lets_the_actor_holding_least_choose_first_and_tops_each_up_to_in_flight():
    shards = [Shard(f"{v}-{k}", _variant(v), 0, 1) for v in range(3) for k in range(4)]
    queue = ShardQueue(shards, holdings=Holdings())
    for v in (1, 2):
        queue.holdings.give("busy", _variant(v))
    sent = fill(queue, {"busy": 0, "idle": 0}, ready=2, in_flight=2)
    assert [actor for actor, _ in sent] == ["idle", "idle", "busy", "busy"]
    assert {s.variant for _, s in sent if _ == "idle"} == {_variant(0)}  # the variant nobody holds
    assert {s.variant for _, s in sent if _ == "busy"} == {_variant(2)}  # its most recent, still with work


def test_fill_near_the_end_sends_the_last_shards_to_idle_actors_only():
    """Fewer shards left than actors: one each (depth 1), so none waits behind a busy actor's shard."""
    queue = ShardQueue([Shard("last", _variant(0), 0, 1)], holdings=Holdings())
    assert fill(queue, {"a": 1}, ready=2, in_flight=2) == []  # "a" renders one: the shard waits for "b"
    assert [actor for actor, _ in fill(queue, {"a": 1, "b": 0}, ready=2, in_flight=2)] == ["b"]
    assert len(queue) == 0


def test_holdings_count_the_actors_per_loaded_model():
    holdings = Holdings()
    holdings.warm("a", "model0")
    holdings.warm("b", "model0")
    assert holdings.model_holders("model0") == 2
    holdings.give("a", _model_variant(1, 0))
    holdings.give("a", _model_variant(1, 1))
    assert (holdings.model_holders("model0"), holdings.model_holders("model1")) == (1, 1)
    holdings.forget("a")
    holdings.forget("b")
    assert (holdings.model_holders("model0"), holdings.model_holders("model1")) == (0, 0)


def test_an_actor_leaving_its_model_prefers_a_model_nobody_has_loaded():
    """Taking the other variant of a model another actor renders would split that model between two actors,
    and each would load a further model sooner: the variant of an unloaded model goes first, though it has
    less work and comes later in the plan."""
    shards = [Shard(f"x{v}-{k}", _model_variant(0, v), 0, 1) for v in range(2) for k in range(4)]
    shards += [Shard("y-0", _model_variant(1, 0), 0, 1)]
    holdings = Holdings()
    queue = ShardQueue(shards, holdings=holdings)
    holdings.warm("a", "model0")
    holdings.warm("b", "model9")  # its own model's work is done
    assert queue.take("a").variant == _model_variant(0, 0)
    assert queue.next_model() == "model1"
    assert queue.take("b").variant == _model_variant(1, 0)


def _loads_with_a_broken_model(seed: int) -> int | None:
    """Two actors, queue depth 2, five models of two variants with two shards each, random durations; one
    model fails to load (the Dispatcher forgets the actor's holdings and drops that model's shards). Returns
    the good models' loads, warm-ups included; None when the broken model would be the warm-up's."""
    rng = random.Random(seed)
    variants = [_model_variant(m, v) for m in range(5) for v in range(2)]
    rng.shuffle(variants)
    holdings = Holdings()
    queue = ShardQueue([Shard(f"{n}-{k}", v, 0, 1) for n, v in enumerate(variants) for k in range(2)], holdings=holdings)
    broken, first = "model3", queue.next_model()
    if first == broken:
        return None
    loaded, queued, clock, loads = {}, {a: collections.deque() for a in "ab"}, {a: rng.random() for a in "ab"}, 2
    for actor in "ab":
        holdings.warm(actor, first)
        loaded[actor] = first
    while True:
        for actor, shard in fill(queue, {a: len(q) for a, q in queued.items() if len(q) < 2}, ready=2, in_flight=2):
            queued[actor].append(shard)
        busy = [a for a in "ab" if queued[a]]
        if not busy:
            return loads
        actor = min(busy, key=clock.get)
        model = queued[actor].popleft().variant.model
        if model == broken:  # the actor tries, fails, and is left with nothing loaded
            loaded[actor] = None
            holdings.reload(actor, [s.variant for s in queued[actor] if s.variant.model != broken])
            queue.drop_model(broken)
        elif model != broken and model != loaded[actor]:
            loaded[actor], loads = model, loads + 1
        clock[actor] += rng.uniform(0.5, 1.5)


def test_a_model_that_cannot_load_costs_the_other_models_no_extra_loads():
    """What tests/integration/test_models_e2e.py runs on Ray, over many timings: the good models load at most
    once per model plus once per actor, however the shards come back."""
    loads = [n for seed in range(300) if (n := _loads_with_a_broken_model(seed)) is not None]
    assert len(loads) > 200 and max(loads) <= 4 + 2
