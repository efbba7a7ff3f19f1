"""Discrete-event simulation: virtual GPUs fed through policy.fill, the dispatch rule the Dispatcher uses."""

from __future__ import annotations

import collections
import heapq
import random
import time
from dataclasses import dataclass, field

from sdbatch.engine.policy import Holdings, ShardQueue, fill, remember
from sdbatch.plan.shards import Shard, Variant

from .gpu import GpuCaches
from .workload import Costs, Workload


@dataclass
class SimResult:
    label: str
    gpus: int
    makespan: float = 0.0
    ideal: float = 0.0
    render_s: float = 0.0
    swap_s: float = 0.0
    first_idle_for_good: float = 0.0
    switches: int = 0  # shards given to an actor whose held list did not have their variant
    switches_by_variant: collections.Counter = field(default_factory=collections.Counter)
    loads: collections.Counter = field(default_factory=collections.Counter)
    dispatches: int = 0  # shards handed out
    fill_calls: int = 0  # policy.fill calls, made while shards were waiting
    policy_s: float = 0.0  # time inside policy.fill, every call
    policy_max_s: float = 0.0  # the longest refill call (the first, which fills every actor at once, left out)
    wall_s: float = 0.0

    @property
    def ratio(self) -> float:
        return self.makespan / self.ideal

    @property
    def idle_tail(self) -> float:
        return self.makespan - self.first_idle_for_good

    @property
    def idle_fraction(self) -> float:
        return 1 - (self.render_s + self.swap_s) / (self.gpus * self.makespan)

    @property
    def policy_us_per_shard(self) -> float:
        return self.policy_s / self.dispatches * 1e6


def simulate(workload: Workload, costs: Costs, gpus: int, in_flight: int, affinity: bool,
             seed: int = 0, label: str = "") -> SimResult:
    """Virtual GPUs fed as the Dispatcher feeds actors: policy.fill at the start and after every finished shard."""
    started = time.perf_counter()
    result = SimResult(label, gpus)
    queue = ShardQueue(workload.shards, affinity, Holdings())
    if workload.shards:
        for actor in range(gpus):  # the Dispatcher's warm-up: each actor has the first model before any shard
            queue.holdings.warm(actor, workload.shards[0].variant.model)
    # fill has already recorded its picks in queue.holdings when it returns, so "did the actor hold this
    # variant before" is answered by a mirror kept with the same policy.remember, in assignment order.
    held: list[list[Variant]] = [[] for _ in range(gpus)]
    rng = random.Random(seed)
    caches = [GpuCaches(costs, workload.lora_mb) for _ in range(gpus)]
    pending: list[collections.deque[Shard]] = [collections.deque() for _ in range(gpus)]
    busy = [False] * gpus
    last_finish = [0.0] * gpus
    events: list[tuple[float, int]] = []  # (finish time, actor)
    hungry = set(range(gpus))  # actors with fewer than in_flight shards (the Dispatcher's actors with room)
    clock = time.perf_counter

    def start(actor: int, now: float) -> None:
        shard = pending[actor].popleft()
        swap = caches[actor].prepare(shard.variant, rng, result.loads)
        render = workload.work[shard.shard_id]
        result.swap_s += swap
        result.render_s += render
        busy[actor] = True
        heapq.heappush(events, (now + swap + render, actor))

    def dispatch(now: float) -> None:
        if not queue:  # as Dispatcher._fill: nothing left to hand out, no policy call
            return
        queued = {actor: len(pending[actor]) + busy[actor] for actor in sorted(hungry)}  # slot order
        t0 = clock()
        sent = fill(queue, queued, gpus, in_flight)
        spent = clock() - t0
        result.policy_s += spent
        if result.fill_calls:
            result.policy_max_s = max(result.policy_max_s, spent)
        result.fill_calls += 1
        result.dispatches += len(sent)
        for actor, shard in sent:
            if shard.variant not in held[actor]:
                result.switches += 1
                result.switches_by_variant[shard.variant] += 1
            remember(held[actor], shard.variant)
            pending[actor].append(shard)
            if not busy[actor]:
                start(actor, now)
        hungry.difference_update(a for a in queued if len(pending[a]) + busy[a] >= in_flight)

    dispatch(0.0)
    while events:
        now, actor = heapq.heappop(events)
        busy[actor] = False
        last_finish[actor] = now
        if pending[actor]:
            start(actor, now)
        hungry.add(actor)
        dispatch(now)  # one finished shard, one refill: the Dispatcher's loop (ray.wait num_returns=1)
    assert not queue and result.dispatches == len(workload.shards), "every shard dispatched once"
    result.makespan = max(last_finish)
    result.first_idle_for_good = min(last_finish)
    result.ideal = sum(workload.work.values()) / gpus
    result.wall_s = time.perf_counter() - started
    return result
