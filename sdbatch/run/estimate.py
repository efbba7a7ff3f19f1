"""Dry-run estimate, pure: the loads the dispatch policy would do over N actors, wall time and cost."""

from __future__ import annotations

import collections
import heapq
from dataclasses import dataclass, field

from sdbatch.engine.policy import Holdings, ShardQueue, fill, remember
from sdbatch.errors import EstimateError
from sdbatch.plan.shards import Plan, Shard, Variant


@dataclass(frozen=True)
class Rates:
    # Images per second on one GPU of the target kind; None: counts only, no time or cost.
    images_per_second: float | None = None
    # Price of one GPU for an hour; None: no cost.
    gpu_hour_price: float | None = None
    # Seconds one LoRA or ControlNet load stalls its actor; 0 leaves loading out of the time.
    load_seconds: float = 0.0

    def check(self) -> Rates:
        for flag, value in (("--images-per-second", self.images_per_second),
                            ("--gpu-hour-price", self.gpu_hour_price), ("--load-seconds", self.load_seconds)):
            if value is not None and not value >= 0:
                raise EstimateError(f"{flag} {value} is negative; give a value >= 0")
        if self.images_per_second == 0:
            raise EstimateError("--images-per-second 0 would never finish; give the measured rate, e.g. 2.5")
        return self


@dataclass(frozen=True)
class Dispatch:
    """What the dispatcher would do: loads and, in seconds (or rows when no rate), when actors are done."""

    affinity: bool
    actors: int
    model_loads: int  # the first model on every actor, then every switch to another model
    lora_loads: int  # each LoRA of a variant an actor takes without holding it
    controlnet_loads: int
    makespan: float  # the last actor's finish


@dataclass
class _Actor:
    model: str
    held: list[Variant] = field(default_factory=list)  # as the driver's Holdings see it (policy.remember)
    in_flight: int = 0
    free_at: float = 0.0  # when its last queued shard is done


def simulate(plan: Plan, actors: int, affinity: bool = True, in_flight: int = 2,
             seconds_per_row: float = 1.0, load_seconds: float = 0.0) -> Dispatch:
    """Replay the Dispatcher over `actors` warm actors that render their queued shards in turn: the same
    policy.fill, refilled each time a shard comes back."""
    if actors < 1:
        raise EstimateError(f"--gpus {actors}: give at least 1")
    queue = ShardQueue(plan.shards, affinity, Holdings())
    first_model = plan.shards[0].variant.model if plan.shards else ""
    pool = [_Actor(first_model) for _ in range(min(actors, len(plan.shards)))]
    for n in range(len(pool)):
        queue.holdings.warm(n, first_model)
    loads = collections.Counter(model=len(pool))  # each actor warms the first model before any shard
    done: list[tuple[float, int, int]] = []  # (finish time, order, actor): shards in flight
    hungry, now, order = set(range(len(pool))), 0.0, 0  # hungry: actors with room, as the Dispatcher's
    while True:
        for n, shard in fill(queue, {n: pool[n].in_flight for n in sorted(hungry)}, len(pool), in_flight):
            actor = pool[n]
            actor.free_at = max(actor.free_at, now) + _cost(actor, shard, loads, seconds_per_row, load_seconds)
            actor.in_flight += 1
            order += 1
            heapq.heappush(done, (actor.free_at, order, n))
        hungry = {n for n in hungry if pool[n].in_flight < in_flight}
        if not done:
            break
        now, _, n = heapq.heappop(done)  # the next shard to come back frees room on its actor
        pool[n].in_flight -= 1
        hungry.add(n)
    return Dispatch(affinity, len(pool), loads["model"], loads["lora"], loads["controlnet"],
                    max((actor.free_at for actor in pool), default=0.0))


def _cost(actor: _Actor, shard: Shard, loads: collections.Counter, seconds_per_row: float,
          load_seconds: float) -> float:
    """Seconds the shard takes on the actor given what it holds; counts the loads it causes."""
    variant, stall = shard.variant, 0.0
    if variant.model != actor.model:
        loads["model"] += 1
        actor.model = variant.model
    if variant not in actor.held:
        loads["lora"] += len(variant.loras)
        loads["controlnet"] += len(variant.controlnets)
        stall = (len(variant.loras) + len(variant.controlnets)) * load_seconds
    remember(actor.held, variant)
    return shard.work() * seconds_per_row + stall  # img2img's shorter runs, a hires pass's extra


@dataclass(frozen=True)
class Estimate:
    rows: int
    variants: int
    shards: int
    gpus: int
    dispatch: Dispatch  # with the run's affinity setting
    other: Dispatch  # with the other setting, for comparison
    rates: Rates
    wall_seconds: float | None = None  # rendering only: from the first shard to the last
    render_gpu_hours: float | None = None  # rows / rate: GPU time spent inside pipeline calls
    billed_gpu_hours: float | None = None  # every GPU for the whole wall time, idle tail included
    cost: float | None = None
    cost_per_1000: float | None = None


def estimate(plan: Plan, gpus: int, rates: Rates = Rates(), affinity: bool = True, in_flight: int = 2) -> Estimate:
    """Loads from replaying the policy; with a rate, wall time and GPU-hours; with a price too, cost."""
    rates = rates.check()
    rate = rates.images_per_second
    # Without a rate only the order matters: a row is one unit of time and loads take none.
    spr, stall = (1.0 / rate, rates.load_seconds) if rate else (1.0, 0.0)
    runs = [simulate(plan, gpus, a, in_flight, spr, stall) for a in (affinity, not affinity)]
    base = Estimate(plan.rows_total, len(plan.variants()), len(plan.shards), gpus, runs[0], runs[1], rates)
    if not rate:
        return base
    wall = runs[0].makespan
    billed = gpus * wall / 3600
    cost = billed * rates.gpu_hour_price if rates.gpu_hour_price is not None else None
    per_1000 = cost / plan.rows_total * 1000 if cost is not None and plan.rows_total else None
    work = sum(shard.work() for shard in plan.shards)  # in text-to-image rows
    return Estimate(**{**base.__dict__, "wall_seconds": wall, "render_gpu_hours": work / rate / 3600,
                       "billed_gpu_hours": billed, "cost": cost, "cost_per_1000": per_1000})


def duration(seconds: float) -> str:
    """Seconds as people read them: 45 s, 12 min, 3 h 05 min, 2 d 04 h."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"
