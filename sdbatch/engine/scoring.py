"""Score actors on Ray: committed shards scored from their stored images, a Scorer loaded once per actor."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from sdbatch.engine import priority
from sdbatch.errors import ModelLoadError, RunStopped
from sdbatch.render.models.fastpath import set_cpu_threads
from sdbatch.render.scoring import ShardScorer
from sdbatch.render.steps.scorer import Scorer
from sdbatch.settings import RunSettings, S3Settings, ScoreSettings
from sdbatch.store.base import Store


@dataclass(frozen=True)
class ScoreWork:
    """One committed shard to score: its ok rows (id, image, prompt), the attempt that committed them, the steps."""

    shard_id: str
    attempt: str
    rows: tuple[dict, ...]
    steps: tuple[str, ...]


@dataclass
class ScoreReport:
    written: dict[str, int] = field(default_factory=dict)  # step -> score files this call wrote
    shards: int = 0  # shards scored (or found scored by another writer meanwhile)
    failed: dict[str, str] = field(default_factory=dict)  # shard -> why it could not be scored


class ScoreActor:
    """Thin, like RenderActor: the ShardScorer does the work, so the same runs in a plain loop."""

    def __init__(self, store: Store, settings: ScoreSettings, layout: str, device: str, s3: S3Settings | None,
                 cpu_threads: int | None):
        priority.favour_calling_thread()
        set_cpu_threads(cpu_threads)
        self.layout = layout
        self.scorer = ShardScorer(store, Scorer(settings, device, s3))

    def score(self, work: ScoreWork) -> list[str]:
        return self.scorer.finish(work.shard_id, self.layout, list(work.rows), work.attempt, steps=work.steps)


RemoteScoreActor = ray.remote(max_restarts=0, max_task_retries=0)(ScoreActor)


def score_on_ray(work: Iterable[ScoreWork], make_actor: Callable[[], object], actors: int, in_flight: int = 2,
                 max_attempts: int = 2, on_done: Callable[[ScoreWork], None] | None = None,
                 limits: RunSettings | None = None, private: bool = True) -> ScoreReport:
    """Score every work item on a pool of `actors`, at most `in_flight` items queued per actor; a lost actor is
    replaced and its items retried, an item that fails `max_attempts` times is reported, not retried forever.
    Never waits forever: steps whose models cannot load stop it before any item is sent (ModelLoadError), a pool
    that does not start in run.start_timeout stops it (RunStopped), and when nothing comes back for
    run.hung_shard_seconds the actors are replaced and their items retried."""
    report, limits = ScoreReport(), limits or RunSettings()
    pool = _started([make_actor() for _ in range(actors)], limits.start_timeout_for(private))
    running: dict[object, tuple[int, object, ScoreWork]] = {}
    attempts: dict[str, int] = {}
    retry: list[ScoreWork] = []
    items = iter(work)

    def settle(item: ScoreWork, why: str) -> None:
        if attempts[item.shard_id] < max_attempts:
            retry.append(item)
        else:
            report.failed[item.shard_id] = why

    def replace(slot: int, actor: object) -> None:
        if pool[slot] is actor:  # its other items fail the same way and come back here
            ray.kill(actor, no_restart=True)
            pool[slot] = make_actor()

    while True:
        for slot, actor in enumerate(pool):
            while sum(1 for s, _, _ in running.values() if s == slot) < in_flight:
                item = retry.pop() if retry else next(items, None)
                if item is None:
                    break
                attempts[item.shard_id] = attempts.get(item.shard_id, 0) + 1
                running[actor.score.remote(item)] = (slot, actor, item)
        if not running:
            return report
        ready, _ = ray.wait(list(running), num_returns=1, timeout=limits.hung_shard_seconds)
        if not ready:
            for slot, actor, item in list(running.values()):
                replace(slot, actor)
                settle(item, f"hung: nothing came back for {limits.hung_shard_seconds:.0f} s")
            running.clear()
            continue
        slot, actor, item = running.pop(ready[0])
        try:
            for step in ray.get(ready[0]):
                report.written[step] = report.written.get(step, 0) + 1
        except (RayActorError, RayTaskError) as exc:
            if isinstance(exc, RayActorError):
                replace(slot, actor)
            settle(item, _why(exc))
            continue
        report.shards += 1
        if on_done:
            on_done(item)


def _started(pool: list, timeout: float) -> list:
    """The pool once every actor has loaded its steps; the first that cannot is the error."""
    try:
        ray.get([actor.__ray_ready__.remote() for actor in pool], timeout=timeout)
    except (RayActorError, GetTimeoutError) as exc:
        for actor in pool:
            ray.kill(actor, no_restart=True)
        if isinstance(exc, GetTimeoutError):
            raise RunStopped(f"the score actors did not start within {timeout:.0f} s (run.start_timeout): no room "
                             "for them (GPUs or CPUs busy or absent); rerun the same command once there is") from exc
        raise ModelLoadError(f"the score steps cannot start: {_why(exc)}") from exc
    return pool


def _why(exc: Exception) -> str:
    """The error a task or an actor's constructor raised, in one line, without Ray's traceback."""
    cause: object = exc
    while isinstance(cause, (RayTaskError, RayActorError)) and getattr(cause, "cause", None) is not None:
        cause = cause.cause
    if cause is not exc and isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"[:500]
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:500]


def actor_maker(store: Store, settings: ScoreSettings, layout: str, gpus_per_actor: float, cpus_per_actor: float,
                s3: S3Settings | None) -> Callable[[], object]:
    device = "cuda" if gpus_per_actor else "cpu"
    threads = None if gpus_per_actor else max(1, int(cpus_per_actor))

    def make() -> object:
        options = {"num_gpus": gpus_per_actor, "num_cpus": cpus_per_actor}
        return RemoteScoreActor.options(**options).remote(store, settings, layout, device, s3, threads)

    return make


def score_shards(work: Iterable[ScoreWork], store: Store, settings: ScoreSettings, layout: str,
                 s3: S3Settings | None, address: str | None, actors: int | None, device: str = "auto",
                 on_done: Callable[[ScoreWork], None] | None = None, limits: RunSettings | None = None) -> ScoreReport:
    """Score the work on the cluster at `address`, or on a private local Ray started for it: one actor per GPU,
    else CPU actors as for rendering; `limits`: the run's start and hang timeouts."""
    from sdbatch.engine import cluster

    cluster.connect(address)
    try:
        shape = cluster.pool_shape(actors, device)
        make = actor_maker(store, settings, layout, shape.gpus_per_actor, shape.cpus_per_actor, s3)
        return score_on_ray(work, make, shape.actors, on_done=on_done, limits=limits, private=address is None)
    finally:
        cluster.shutdown()
