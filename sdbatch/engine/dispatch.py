"""Dispatch loop: bounded shards in flight per actor, requeue on actor death, hung and stalled pools, events."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import ray
from ray.exceptions import (
    ObjectLostError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)

from sdbatch.engine import nodes
from sdbatch.engine.policy import Holdings, ShardQueue, fill
from sdbatch.engine.watch import ShardClock, SlotTimer, Stall, Watch, pool_story
from sdbatch.errors import FatalRunError, ModelLoadError, RayLost, RunStopped
from sdbatch.plan.shards import Shard
from sdbatch.tasks import ShardResult, ShardTask

# Failures that mean "the process or node holding the work went away", not "the work is bad".
ACTOR_LOST = (RayActorError, WorkerCrashedError, ObjectLostError)
# The loop wakes at least this often to look for hung shards, a stalled pool and a lost Ray.
WATCH_SECONDS = 1.0


class Events(Protocol):
    def shard_done(self, result: ShardResult) -> None: ...
    def shard_retry(self, shard_id: str, error: str) -> None: ...
    def shard_gave_up(self, shard_id: str, error: str) -> None: ...
    def model_failed(self, model: str, error: str) -> None: ...  # every shard of it is given up
    def actor_lost(self, actor: str, error: str) -> None: ...
    def waiting(self, message: str) -> None: ...
    def tick(self, pool: dict[str, int]) -> None: ...  # the loop is alive: the pool's state, about 1/s


@dataclass
class DispatchReport:
    # Totals, not one record per shard: a run may have millions of shards. `done` holds the plan's own
    # id strings, in the order the shards finished.
    done: list[str] = field(default_factory=list)
    rows_rendered: int = 0
    rows_adopted: int = 0
    pipeline_seconds: float = 0.0
    gave_up: dict[str, str] = field(default_factory=dict)  # shard id -> last error
    actors_started: int = 0
    actors_lost: int = 0  # died or hung: these spend their shards' attempts
    actors_hung: int = 0
    actors_preempted: int = 0  # their node ended with notice: their shards' attempts are not spent
    ray_restarts: int = 0  # times the private Ray was started again after its node died
    model_loads: dict[str, int] = field(default_factory=dict)  # actor -> loads
    lora_loads: dict[str, int] = field(default_factory=dict)  # actor -> LoRA files loaded
    controlnet_loads: dict[str, int] = field(default_factory=dict)  # actor -> ControlNets loaded
    render_started: float = 0.0  # monotonic time the actors were warm and work was first sent
    render_finished: float = 0.0


@dataclass
class _Slot:
    name: str
    handle: Any
    warm_model: str = ""  # the model it loads before its first shard
    in_flight: int = 0
    placed: bool = False  # its process is up (it may still be loading its model)
    ready: bool = False  # warm: its first model is loaded; only ready actors are given shards
    node: str = ""  # the Ray node it runs on, once warm
    timer: SlotTimer = field(default_factory=SlotTimer)


class Dispatcher:
    """Feeds shards to a pool of actors, keeping each busy with at most `in_flight` shards."""

    def __init__(self, make_actor: Callable[[str], Any], actors: int, in_flight: int,
                 max_attempts: int, make_task: Callable[[Shard], ShardTask], events: Events,
                 affinity: bool = True, watch: Watch | None = None, report: DispatchReport | None = None):
        self.make_actor, self.make_task, self.events = make_actor, make_task, events
        self.actor_count, self.in_flight, self.max_attempts = actors, in_flight, max_attempts
        self.affinity, self.watch = affinity, watch or Watch()
        self.report = report or DispatchReport()  # a restarted Ray's dispatcher adds to the first one's
        self.slots: list[_Slot] = []
        self.running: dict[Any, tuple[_Slot, Shard]] = {}
        self.warming: dict[Any, _Slot] = {}
        self.placing: dict[Any, _Slot] = {}
        self.holdings = Holdings()  # the driver's view of what is warm on each actor, by slot name
        self.first_model = ""
        self.attempts: collections.Counter[str] = collections.Counter()
        self.failed_models: dict[str, str] = {}  # model -> why it cannot be loaded
        self.node_fates = nodes.NodeFates()
        self.pids: list[int] = []  # every actor process warmed: a private Ray's may outlive its raylet
        self.clock = ShardClock(self.watch.hung_shard_seconds, self.watch.hung_shard_factor)
        self.stall = Stall(self.watch.start_timeout, self.watch.notice_seconds)
        self.next_watch = self.next_health = 0.0

    def run(self, shards: list[Shard], first_model: str, on_ready: Callable[[], None]) -> DispatchReport:
        """Start the actors, call on_ready once the first is warm, then render every shard (or give it up).

        Actors that are not warm yet (still loading, or waiting for a node with a free GPU) get no
        shards, so lost capacity slows the run down instead of stalling it; a pool with no live actor for
        `start_timeout` stops the run, a lost private Ray raises RayLost.
        """
        queue = ShardQueue(shards, self.affinity, self.holdings)
        if not queue:
            return self.report
        self.first_model = first_model
        self.slots = [self._new_slot() for _ in range(min(self.actor_count, len(queue)))]
        try:
            while not any(slot.ready for slot in self.slots):
                self._step(queue)
            on_ready()
            self.report.render_started = self.report.render_started or time.monotonic()
            while queue or self.running:
                self._fill(queue)
                self._step(queue)
        finally:
            for slot in [*self.warming.values(), *self.placing.values()]:  # replacements that never found room
                ray.kill(slot.handle, no_restart=True)
        self.report.render_finished = time.monotonic()
        return self.report

    def _step(self, queue: ShardQueue) -> None:
        refs = [*self.running, *self.warming, *self.placing]
        if not refs:  # every actor lost at once and none replaced: only the watch moves things on
            time.sleep(WATCH_SECONDS)
        ready = ray.wait(refs, num_returns=1, timeout=WATCH_SECONDS)[0] if refs else []
        for ref in ready:
            if ref in self.placing:
                self._placed(self.placing.pop(ref), queue)
            elif ref in self.warming:
                self._warmed(ref, queue)
            else:
                self._collect(ref, queue)
        now = time.monotonic()
        if now >= self.next_watch:
            self.next_watch = now + WATCH_SECONDS
            self._look_around(queue, now)

    def _look_around(self, queue: ShardQueue, now: float) -> None:
        if self.watch.ray_lost and now >= self.next_health:
            self.next_health = now + 5 * WATCH_SECONDS
            lost = self.watch.ray_lost()
            if lost:
                self.warming.clear()  # gone with it: nothing Ray can kill
                nodes.end_orphans(self.pids)
                raise RayLost(lost)
        work: dict[int, float] = {}  # per slot, its largest shard in flight
        for slot, shard in self.running.values():
            work[id(slot)] = max(work.get(id(slot), 0.0), shard.work())
        for slot in list(self.slots):
            threshold = self.clock.threshold_for(work.get(id(slot), 1.0))
            if slot.in_flight and slot.timer.running_for(now) > threshold:
                self._hung(slot, slot.timer.running_for(now), threshold, queue)
        self.stall.update(any(slot.ready for slot in self.slots), now)
        if self.stall.expired(now):
            raise RunStopped(f"no actor was ready for {self.stall.waited(now):.0f} s (run.start_timeout): "
                             f"{self._pool_story()}. What is committed stays; rerun the same command to resume "
                             "(raise run.start_timeout if the cluster needs longer to add a node)")
        if self.stall.notice_due(now):
            self.events.waiting(f"no live actor for {self.stall.waited(now):.0f} s: {self._pool_story()}; "
                                f"the run stops after {self.stall.timeout:.0f} s (run.start_timeout)")
        self.events.tick({"actors": len(self.slots), "actors_ready": sum(s.ready for s in self.slots),
                          "shards_in_flight": len(self.running), "shards_queued": len(queue),
                          "shards_done": len(self.report.done), "shards_given_up": len(self.report.gave_up)})

    def _pool_story(self) -> str:
        waiting = [slot for slot in self.slots if not slot.ready]
        loading = [slot.warm_model for slot in waiting if slot.placed]
        return pool_story(len(waiting) - len(loading), loading, self.watch.actor_needs)

    def _new_slot(self, model: str | None = None) -> _Slot:
        self.report.actors_started += 1
        name = f"actor-{self.report.actors_started}"
        slot = _Slot(name, self.make_actor(name), warm_model=model or self.first_model)
        self.placing[slot.handle.__ray_ready__.remote()] = slot  # answers once its process is up
        return slot

    def _placed(self, slot: _Slot, queue: ShardQueue) -> None:
        """The actor's process is up (or failed to start: its warm call then says so). It warms the model of
        the work left now, not when it was asked for: a node that joins late must not load a finished model.
        Until rendering starts, every actor warms the run's first model, so a bad one stops the run early."""
        if slot not in self.slots:
            return  # replaced meanwhile
        slot.placed = True
        if self.report.render_started:
            slot.warm_model = queue.next_model() or slot.warm_model
        self.warming[slot.handle.warm.remote(slot.warm_model)] = slot

    def _warmed(self, ref: Any, queue: ShardQueue) -> None:
        slot = self.warming.pop(ref)
        try:
            info = ray.get(ref)
        except ACTOR_LOST as exc:  # died while loading (node lost, out of memory): try another
            self._replace(slot, type(exc).__name__, queue)
            return
        except RayTaskError as exc:  # warm() raised: usually the model cannot be loaded
            if not self.report.render_started:  # the run's first model: stop before anything is written
                raise FatalRunError(_cause_text(exc)) from exc
            if isinstance(exc.cause, ModelLoadError):  # a replacement warming another model
                slot.ready = True  # alive, holding nothing: it takes other work
                self._model_failed(slot, slot.warm_model, _cause_text(exc), queue)
            else:  # this actor cannot start (a bad node): counted as lost, and replaced
                self._replace(slot, type(exc).__name__, queue)
            return
        slot.placed = slot.ready = True
        slot.node = info.get("node", "")
        self.pids.append(info["pid"])
        self.holdings.warm(slot.name, slot.warm_model)  # its first shard of this model needs no switch
        self.report.model_loads[slot.name] = info["model_loads"]

    def _fill(self, queue: ShardQueue) -> None:
        if not queue:
            return
        # Usually one actor has room (its shard just came back). The policy's cost per shard does not
        # grow with the number of actors: Holdings keeps the holder counts (see policy.py).
        ready = [s for s in self.slots if s.ready]
        room = {s.name: s.in_flight for s in ready if s.in_flight < self.in_flight}
        by_name = {s.name: s for s in ready}
        now = time.monotonic()
        for name, shard in fill(queue, room, len(ready), self.in_flight):
            slot = by_name[name]
            self.attempts[shard.shard_id] += 1
            ref = slot.handle.render_shard.remote(self.make_task(shard))
            self.running[ref] = (slot, shard)
            slot.timer.sent(slot.in_flight, now)
            slot.in_flight += 1

    def _collect(self, ref: Any, queue: ShardQueue) -> None:
        slot, shard = self.running.pop(ref)
        slot.in_flight -= 1
        took = slot.timer.returned(slot.in_flight, time.monotonic())
        try:
            result: ShardResult = ray.get(ref)
        except ACTOR_LOST as exc:
            if getattr(exc, "preempted", False) or self.node_fates.ended_with_notice(slot.node):
                self.attempts[shard.shard_id] -= 1  # its node was taken away: not the shard's failure
                self.events.shard_retry(shard.shard_id, "its node was drained or stopped")
                queue.requeue(shard)
                self._replace(slot, "preempted: its node was drained or stopped", queue, preempted=True)
            else:
                self._retry_or_give_up(shard, f"actor lost: {type(exc).__name__}", queue)
                self._replace(slot, type(exc).__name__, queue)  # after the requeue: it warms the work left
            return
        except RayTaskError as exc:
            if isinstance(exc.cause, ModelLoadError):  # e.g. a second model of the manifest
                self._model_failed(slot, shard.variant.model, _cause_text(exc), queue, shard)
            else:
                self._retry_or_give_up(shard, _cause_text(exc), queue)
            return
        self.clock.finished(took, shard.work())  # only shards that ended well: a failure's time says nothing
        report = self.report
        report.done.append(shard.shard_id)
        report.rows_rendered += result.rendered
        report.rows_adopted += result.adopted
        report.pipeline_seconds += result.pipeline_seconds
        for tally, loads in ((self.report.model_loads, result.model_loads),
                             (self.report.lora_loads, result.lora_loads),
                             (self.report.controlnet_loads, result.controlnet_loads)):
            tally[slot.name] = tally.get(slot.name, 0) + loads
        self.events.shard_done(result)

    def _hung(self, slot: _Slot, running_for: float, threshold: float, queue: ShardQueue) -> None:
        """Give up the shards in flight on an actor whose shard runs far past its peers; kill and replace it."""
        error = f"hung on {slot.name}: a shard ran {running_for:.0f} s, past {threshold:.0f} s"
        for ref in [ref for ref, (owner, _) in self.running.items() if owner is slot]:
            _, shard = self.running.pop(ref)
            self._retry_or_give_up(shard, error, queue)
        slot.in_flight = 0
        self.report.actors_hung += 1
        self._replace(slot, f"hung: a shard ran {running_for:.0f} s, past {threshold:.0f} s", queue)

    def _replace(self, slot: _Slot, why: str, queue: ShardQueue, preempted: bool = False) -> None:
        if slot not in self.slots:
            return  # already replaced when its first lost shard came back
        self.next_health = 0.0  # a lost actor may be the first sign of a lost Ray: look at once
        if preempted:
            self.report.actors_preempted += 1
        else:
            self.report.actors_lost += 1
        if self.report.actors_lost > self.actor_count * self.max_attempts:
            raise RunStopped(f"{self.report.actors_lost} actors were lost (the last: {why}); check the cluster's "
                             "memory and the Ray logs, then rerun the same command to resume")
        self.events.actor_lost(slot.name, why)
        # It warms the model of the work left, not the run's first model: that one may be long done.
        model = queue.next_model() or self.holdings.model(slot.name)
        self.holdings.forget(slot.name)  # its replacement starts cold
        self.slots[self.slots.index(slot)] = self._new_slot(model)
        ray.kill(slot.handle, no_restart=True)  # a hung-but-alive actor must not keep its GPU

    def _model_failed(self, slot: _Slot, model: str, error: str, queue: ShardQueue,
                      shard: Shard | None = None) -> None:
        """Give up every shard of a model that cannot be loaded; the other models' work goes on, and a
        rerun retries these shards (fix the model first). Said once per model, not once per shard."""
        if model not in self.failed_models:
            self.failed_models[model] = error
            self.events.model_failed(model, error)
        self.holdings.reload(slot.name, [queued.variant for owner, queued in self.running.values()
                                         if owner is slot and queued.variant.model not in self.failed_models])
        shards = ([shard] if shard else []) + queue.drop_model(model)
        for lost in shards:
            self.report.gave_up[lost.shard_id] = self.failed_models[model]

    def _retry_or_give_up(self, shard: Shard, error: str, queue: ShardQueue) -> None:
        if shard.variant.model in self.failed_models:  # e.g. in flight on an actor that died meanwhile
            self.report.gave_up[shard.shard_id] = self.failed_models[shard.variant.model]
        elif self.attempts[shard.shard_id] >= self.max_attempts:
            self.report.gave_up[shard.shard_id] = error
            self.events.shard_gave_up(shard.shard_id, error)
        else:
            self.events.shard_retry(shard.shard_id, error)
            queue.requeue(shard)


def _cause_text(exc: RayTaskError) -> str:
    cause = exc.cause if exc.cause is not None else exc
    return f"{type(cause).__name__}: {cause}"
