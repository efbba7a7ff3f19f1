"""Ray set-up: a private local Ray or a running cluster, the actor pool's size and resources."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Callable

import ray

from sdbatch.engine.actor import RemoteRenderActor
from sdbatch.engine.scheduler import Dispatcher, DispatchReport, Events
from sdbatch.plan import Shard
from sdbatch.render.renderer import RendererSettings
from sdbatch.spec import JobSpec
from sdbatch.storage import S3Settings, Store
from sdbatch.tasks import ShardTask

# A CPU actor holding an SD1.5-sized pipeline in float32 needs about this much memory.
CPU_ACTOR_MEMORY = 4 * 1024**3


@dataclass(frozen=True)
class PoolShape:
    actors: int
    gpus_per_actor: float
    cpus_per_actor: float


def connect(address: str | None) -> None:
    """Join a running cluster, or start a private local Ray that ends with this process."""
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    # A short temp dir: Ray's unix socket paths must stay under ~107 characters.
    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="sdbatch-ray-", dir="/tmp"))
    yield_to_actors()


def yield_to_actors() -> None:
    """Lower the private Ray's own daemons (GCS, raylet, agents: ~4% of a core in periodic wake-ups) to
    nice 19, so they stop preempting CPU actors, whose threads wait on each other at every operator:
    a tick of 5% of a core slowed a 2-thread render by 3% at nice 0, by 1% at nice 19 (2 cores).
    They are this process's descendants; workers are the ones Ray already started at a positive nice.
    Allowed without privileges (only lowering); Linux only (/proc)."""
    for pid in _descendants(os.getpid()):
        try:
            if os.getpriority(os.PRIO_PROCESS, pid) > 0:
                continue  # a worker: a CPU actor takes nice 0 back itself (fastpath.set_cpu_threads)
            for task in os.listdir(f"/proc/{pid}/task"):  # Linux keeps a nice value per thread
                os.setpriority(os.PRIO_PROCESS, int(task), 19)
        except OSError:  # ended meanwhile
            continue


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        try:
            with open(f"/proc/{name}/stat") as f:
                parent = int(f.read().rpartition(")")[2].split()[1])  # after "(comm)": state, ppid
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


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
                            name=f"{os.uname().nodename}/{name}", s3=s3, fast=spec.render)


def actor_factory(store: Store, spec: JobSpec, shape: PoolShape, s3: S3Settings) -> Callable[[str], object]:
    def make(name: str):
        options = {"num_gpus": shape.gpus_per_actor, "num_cpus": shape.cpus_per_actor}
        return RemoteRenderActor.options(**options).remote(store, renderer_settings(spec, shape, s3, name))

    return make


def run_shards(shards: list[Shard], make_task: Callable[[Shard], ShardTask], store: Store,
               spec: JobSpec, events: Events, first_model: str, on_ready: Callable[[], None],
               s3: S3Settings) -> tuple[DispatchReport, PoolShape]:
    """Render the shards on the connected Ray (on_ready runs once the actors are warm)."""
    run = spec.run
    shape = pool_shape(run.actors, run.device)
    dispatcher = Dispatcher(actor_factory(store, spec, shape, s3), shape.actors, run.shards_in_flight,
                            run.max_shard_attempts, make_task, events, affinity=run.affinity)
    return dispatcher.run(shards, first_model, on_ready), shape


def shutdown() -> None:
    ray.shutdown()
