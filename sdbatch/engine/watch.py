"""Watching a run's progress without Ray: hung shards by the run's own shard times, and a pool with no live actor."""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

# Shards whose times the hung threshold follows: enough to see the run's slow ones (a variant switch, a
# long row), few enough that the threshold follows a change of phase (another model, other sizes).
RECENT_SHARDS = 64


@dataclass(frozen=True)
class Watch:
    """When the dispatcher stops waiting; RunSettings says why each default is what it is."""

    start_timeout: float = 300.0
    hung_shard_seconds: float = 600.0
    hung_shard_factor: float = 10.0
    # Why the Ray this run owns can run nothing more (None: it can), asked every few seconds. Only for a
    # private Ray, whose loss nobody else will repair.
    ray_lost: Callable[[], str | None] | None = None
    actor_needs: str = ""  # for messages: what each actor asks of the cluster
    # How often a pool with no live actor says so, in the progress output and the log.
    notice_seconds: float = 30.0


class ShardClock:
    """When a shard has run far longer than its peers took: `factor` times the slowest of the last
    RECENT_SHARDS shards, and never less than `floor` seconds (all the first shards are judged by). Times are
    compared per unit of work (rows times the variant's relative cost), so a shard of hires rows is not judged
    by the time of a shard of plain ones."""

    def __init__(self, floor: float, factor: float):
        self.floor, self.factor = floor, factor
        self.recent: collections.deque[float] = collections.deque(maxlen=RECENT_SHARDS)  # seconds per unit

    def finished(self, seconds: float, work: float = 1.0) -> None:
        self.recent.append(seconds / work)

    def threshold_for(self, work: float = 1.0) -> float:
        return max(self.floor, self.factor * max(self.recent, default=0.0) * work)

    @property
    def threshold(self) -> float:
        return self.threshold_for()


@dataclass
class SlotTimer:
    """One actor's shard clock: how long the shard at the head of its queue has been running. Shards in
    flight on one actor run one at a time on its device, so the head started when the one before it ended."""

    head_since: float | None = None

    def sent(self, in_flight_before: int, now: float) -> None:
        if in_flight_before == 0:
            self.head_since = now

    def returned(self, in_flight_after: int, now: float) -> float:
        """The returned shard's time on this actor; the next one in flight starts now."""
        took = now - (self.head_since if self.head_since is not None else now)
        self.head_since = now if in_flight_after else None
        return took

    def running_for(self, now: float) -> float:
        return 0.0 if self.head_since is None else now - self.head_since


class Stall:
    """A pool with no live actor: since when, when to say so again, and when to give up."""

    def __init__(self, timeout: float, notice_every: float):
        self.timeout, self.notice_every = timeout, notice_every
        self.since: float | None = None
        self.noticed = 0.0

    def update(self, live: bool, now: float) -> None:
        if live:
            self.since = None
        elif self.since is None:
            self.since, self.noticed = now, now

    def waited(self, now: float) -> float:
        return 0.0 if self.since is None else now - self.since

    def notice_due(self, now: float) -> bool:
        if self.since is None or now - self.noticed < self.notice_every:
            return False
        self.noticed = now
        return True

    def expired(self, now: float) -> bool:
        return self.since is not None and now - self.since > self.timeout


def pool_story(unplaced: int, loading: list[str], needs: str) -> str:
    """What a pool with no live actor is waiting for, in a line: room on the cluster, or models loading."""
    parts = []
    if unplaced:
        asks = f" (each asks for {needs})" if needs else ""
        parts.append(f"{unplaced} actor(s) waiting for room on the cluster{asks}; `ray status` shows what it has")
    if loading:
        parts.append(f"{len(loading)} actor(s) still loading {loading[0]}")
    return ", ".join(parts) or "every actor was lost"
