"""Ray set-up: a private local Ray or a running cluster, the actor pool's size and resources."""

from __future__ import annotations

import os
import re
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import ray

from sdbatch.engine import nodes, priority
from sdbatch.engine.actor import RemoteRenderActor
from sdbatch.engine.dispatch import Dispatcher, DispatchReport, Events
from sdbatch.engine.watch import Watch
from sdbatch.errors import RayLost, RunStopped
from sdbatch.logs import quieted
from sdbatch.plan.shards import Shard, shards_except
from sdbatch.settings import RendererSettings, S3Settings
from sdbatch.spec import JobSpec
from sdbatch.store.base import Store
from sdbatch.tasks import ShardTask

# A head node that accepts no connection in this long is down or unreachable from here.
CONNECT_SECONDS = 10.0

# A CPU actor holding an SD1.5-sized pipeline in float32 needs about this much memory.
CPU_ACTOR_MEMORY = 4 * 1024**3


@dataclass(frozen=True)
class PoolShape:
    actors: int
    gpus_per_actor: float
    cpus_per_actor: float


# Timers of a private one-node Ray that wake its daemons many times a second for work such a cluster
# does not have (remote object pulls, autoscaler load reports, metrics for a dashboard that is off). On
# a CPU render those wake-ups preempt the render's threads; a cluster's own settings are left alone.
QUIET_PRIVATE_RAY = {
    "event_stats": False,  # per-handler timing of every event-loop callback, for debugging Ray itself
    "metrics_report_interval_ms": 60_000,  # no dashboard or Prometheus reads them
    "raylet_report_resources_period_milliseconds": 1_000,  # to the GCS; the raylet schedules its own node
    "gcs_pull_resource_loads_period_milliseconds": 5_000,  # for an autoscaler that a private Ray has not
    "raylet_check_gc_period_milliseconds": 10_000,  # distributed-reference GC: one node, few objects
    "object_manager_timer_freq_ms": 1_000,  # retries of pulls from other nodes: there are none
    "kill_idle_workers_interval_ms": 5_000,  # idle workers cost memory, not time: reaped less eagerly
    "memory_monitor_refresh_ms": 1_000,  # Ray's OOM killer stays on, checking 1/s instead of 4/s
}


def connect(address: str | None) -> None:
    """Join a running cluster, or start a private local Ray that ends with this process."""
    if address:
        check_reachable(address)
        ray.init(address=address, log_to_driver=False)
        return
    own_threads = priority.threads()
    # Ray turns token auth on for a new local cluster, with a warning on every run that invites turning it
    # off: the auth stays, the warning goes (setting RAY_AUTH_MODE ourselves would bypass Ray's set-up).
    with quieted("ray._private.authentication.authentication_token_setup"):
        # A short temp dir: Ray's unix socket paths must stay under ~107 characters.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, _system_config=QUIET_PRIVATE_RAY,
                 _temp_dir=tempfile.mkdtemp(prefix="sdbatch-ray-", dir="/tmp"))
    yield_to_actors(priority.threads() - own_threads)


def check_reachable(address: str) -> None:
    """RunStopped naming the fix when a host:port address answers no connection: ray.init would retry it for
    minutes, printing Ray's own warnings. Other forms (auto, ray://) are Ray's to resolve and refuse."""
    found = re.fullmatch(r"\[?([^\[\]/]+?)\]?:(\d+)", address)
    if found is None:
        return
    try:
        socket.create_connection((found.group(1), int(found.group(2))), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise RunStopped(f"cannot reach the Ray cluster at {address} ({exc.strerror or type(exc).__name__}); check "
                         "--address / RAY_ADDRESS (the head node's address, host:6379, or auto on a cluster "
                         "node) and that the cluster is up") from exc


def yield_to_actors(driver_ray_threads: set[int]) -> None:
    """Lower the private Ray's own work to nice 19: its daemons (GCS, raylet, agents) and the threads
    ray.init started in this process. They preempt CPU actors, whose threads wait on each other at every
    operator, so even a short tick stalls the whole render; at nice 19 it costs less (docs/BENCHMARKS.md).
    Workers (already at Ray's positive nice) are left to the actors (engine/actor.py)."""
    priority.lower(driver_ray_threads)
    for pid in priority.descendants(os.getpid()):
        try:
            if os.getpriority(os.PRIO_PROCESS, pid) > 0:
                continue  # a worker
        except OSError:  # ended meanwhile
            continue
        priority.lower(priority.threads(pid))


def pool_shape(requested: int | None, device: str = "auto") -> PoolShape:
    """One actor per GPU; with none, as many CPU actors as CPUs and memory hold, sharing the CPUs."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    if device == "cuda" or (device == "auto" and gpus):
        # No CPU reservation: on small boxes a reserved CPU per GPU actor starves Ray's own tasks.
        # With device="cuda", asking for more GPUs than are up is how an autoscaler is told to add nodes.
        return PoolShape(requested or max(gpus, 1), 1, 0)
    by_memory = max(1, int(resources.get("memory", CPU_ACTOR_MEMORY)) // CPU_ACTOR_MEMORY)
    actors = requested or min(cpus, by_memory)
    return PoolShape(actors, 0, max(1, cpus // actors))


def renderer_settings(spec: JobSpec, shape: PoolShape, s3: S3Settings, name: str) -> RendererSettings:
    """What one actor renders with: the job's [render] and [run] settings, its share of the node's CPUs."""
    run = spec.run
    # s3: for inputs (control images, LoRAs, models on s3://), which may live outside the output's bucket.
    return RendererSettings(batch_size=run.batch_size, io_threads=run.io_threads,
                            cpu_threads=None if shape.gpus_per_actor else int(shape.cpus_per_actor),
                            name=f"{os.uname().nodename}/{name}", s3=s3, fast=spec.render,
                            embedding_dir=spec.defaults.embedding_dir, score=spec.score)


def actor_factory(store: Store, spec: JobSpec, shape: PoolShape, s3: S3Settings) -> Callable[[str], object]:
    def make(name: str):
        # One call per shard in flight runs at once: a shard's commit overlaps the next one's rendering.
        options = {"num_gpus": shape.gpus_per_actor, "num_cpus": shape.cpus_per_actor,
                   "max_concurrency": max(1, spec.run.shards_in_flight)}
        return RemoteRenderActor.options(**options).remote(store, renderer_settings(spec, shape, s3, name))

    return make


def run_shards(shards: list[Shard], make_task: Callable[[Shard], ShardTask], store: Store,
               spec: JobSpec, events: Events, first_model: str, on_ready: Callable[[], None],
               s3: S3Settings, address: str | None) -> tuple[DispatchReport, PoolShape]:
    """Render the shards on the cluster at `address`, or on a private local Ray started for them, and
    started again (run.ray_restarts times) for the shards not done when its node dies. on_ready runs once,
    when the first actor is warm."""
    run, private = spec.run, address is None
    report, restarts, ready_once = DispatchReport(), 0, _once(on_ready)
    while True:
        connect(address)
        try:
            shape = pool_shape(run.actors, run.device)
            needs = {"GPU": shape.gpus_per_actor, "CPU": shape.cpus_per_actor}
            if private and (why := nodes.never_fits(needs)):
                raise RunStopped(f"no actor can ever start here: {why} (run.device = {run.device!r}); use "
                                 "--device auto or cpu on this machine, or run where there is a GPU")
            watch = Watch(run.start_timeout_for(private), run.hung_shard_seconds, run.hung_shard_factor,
                          nodes.private_ray_lost if private else None,
                          ", ".join(f"{amount:g} {name}" for name, amount in needs.items() if amount))
            dispatcher = Dispatcher(actor_factory(store, spec, shape, s3), shape.actors, run.shards_in_flight,
                                    run.max_shard_attempts, make_task, events, run.affinity, watch, report)
            return dispatcher.run(shards, first_model, ready_once), shape
        except RayLost as exc:
            if restarts >= run.ray_restarts:
                again = f" again after {restarts} restart(s)" if restarts else " (run.ray_restarts = 0)"
                raise RayLost(f"{exc}{again}; the run stops here. What is committed stays: rerun the same "
                              "command to resume (the Ray logs are under /tmp/sdbatch-ray-*)") from exc
            restarts += 1
            report.ray_restarts = restarts
            shards = shards_except(shards, pa.array([*report.done, *report.gave_up], pa.string()))
            first_model = shards[0].variant.model if shards else first_model
            events.waiting(f"{exc}; starting a new private Ray ({restarts} of at most {run.ray_restarts}) for "
                           f"the {len(shards)} shards not done")
        finally:
            shutdown()


def _once(callback: Callable[[], None]) -> Callable[[], None]:
    called = []

    def call() -> None:
        if not called:
            called.append(True)
            callback()

    return call


def shutdown() -> None:
    ray.shutdown()
