"""The real driver's CPU per shard: Dispatcher on local Ray with sleep-actors, plus ray.wait and _fill at scale."""

from __future__ import annotations

import itertools
import os
import random
import tempfile
import time

from sdbatch.engine.policy import ShardQueue
from sdbatch.plan.shards import Shard

from .workload import MODEL


def driver_cpu_per_shard(shards: int, actors: int, sleep_s: float, in_flight: int, variants: int,
                         shard_size: int, seed: int, wait_refs: int) -> dict:
    """The real Dispatcher feeding sleep-actors on a private local Ray; driver CPU per dispatched shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from sdbatch.engine.dispatch import Dispatcher
    from sdbatch.manifest.controlnets import CONTROLNET_TYPE
    from sdbatch.manifest.references import LORA_TYPE
    from sdbatch.output.job import new_attempt_id
    from sdbatch.plan.planned import ROW_GROUP_ROWS, PlannedRows
    from sdbatch.plan.shards import plan_shards
    from sdbatch.tasks import ShardResult, ShardTask

    class SleepActor:
        """RenderActor's interface; sleeps instead of rendering."""

        def __init__(self, name: str, seconds: float):
            self.name, self.seconds = name, seconds

        def warm(self, model: str) -> dict:
            return {"pid": os.getpid(), "device": "sleep", "model_hash": "", "model_loads": 1}

        def render_shard(self, task: ShardTask) -> ShardResult:
            time.sleep(self.seconds)
            return ShardResult(task.shard_id, task.attempt, True, len(task.rows), 0, len(task.rows), 0,
                               self.seconds, actor=self.name)

    class Events:
        def __init__(self):
            self.done = 0

        def shard_done(self, result):
            self.done += 1

        def shard_retry(self, shard_id, error):
            pass

        def shard_gave_up(self, shard_id, error):
            pass

        def model_failed(self, model, error):
            pass

        def actor_lost(self, actor, error):
            pass

        def waiting(self, message):
            pass

        def tick(self, pool):
            pass

    # A normalized-manifest-shaped table (the render columns), planned by the real planner.
    rng = random.Random(seed)
    rows = shards * shard_size
    pick = [rng.randrange(variants) for _ in range(rows)]
    words = ["portrait", "city", "forest", "cat", "watercolor", "neon", "studio light", "35mm", "misty", "hdr"]
    table = pa.table({
        "id": [f"row-{i:07d}" for i in range(rows)],
        "prompt": [" ".join(rng.choices(words, k=14)) for _ in range(rows)],
        "negative_prompt": ["blurry, low quality"] * rows,
        "seed": pa.array([rng.getrandbits(63) for _ in range(rows)], pa.int64()),
        "model": [MODEL] * rows,
        "width": pa.array([512] * rows, pa.int64()),
        "height": pa.array([512] * rows, pa.int64()),
        "steps": pa.array([30] * rows, pa.int64()),
        "scheduler": pa.array([None] * rows, pa.string()),
        "guidance_scale": [7.5] * rows,
        "loras": pa.array([[{"path": f"/loras/style-{v:02d}.safetensors", "weight": 0.8}] if v else []
                           for v in pick], LORA_TYPE),
        "controlnets": pa.array([[] for _ in pick], CONTROLNET_TYPE),
    })
    plan, planned = plan_shards(table, shard_size)
    planned_path = os.path.join(tempfile.mkdtemp(prefix="sdb-bench-plan-"), "planned.parquet")
    pq.write_table(planned, planned_path, row_group_size=ROW_GROUP_ROWS)
    reader = PlannedRows(planned_path)

    def make_task(shard: Shard) -> ShardTask:  # as driver.execute builds them: a row range of the planned file
        return ShardTask(shard.shard_id, new_attempt_id(), tuple(reader.rows(shard)), "png", 95)

    remote = ray.remote(max_restarts=0, max_task_retries=0)(SleepActor)
    ray.init(address="local", num_cpus=max(2, actors), include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="sdb-bench-", dir="/tmp"))
    try:
        events = Events()
        dispatcher = Dispatcher(lambda name: remote.options(num_cpus=1).remote(name, sleep_s), actors,
                                in_flight, max_attempts=3, make_task=make_task, events=events)
        marks = {}

        def on_ready():
            marks["cpu"], marks["wall"] = time.process_time(), time.perf_counter()

        report = dispatcher.run(list(plan.shards), MODEL, on_ready)
        cpu, wall = time.process_time() - marks["cpu"], time.perf_counter() - marks["wall"]
        waits = ray_wait_cpu([actors * in_flight, wait_refs])
    finally:
        ray.shutdown()
    done = len(report.done)
    assert done == len(plan.shards) == events.done, (done, len(plan.shards), events.done)
    return {"shards": done, "actors": actors, "in_flight": in_flight, "sleep_ms": sleep_s * 1000,
            "variants": len(plan.variants()), "cpu_s": cpu, "wall_s": wall,
            "ms_per_shard": cpu / done * 1000, "shards_per_s": done / wall, "rows_per_shard": shard_size,
            "wait_ms": waits}


def ray_wait_cpu(counts: list[int], calls: int = 200) -> dict[int, float]:
    """Driver CPU (ms) of one ray.wait(num_returns=1) over n refs, one ready, as the Dispatcher's loop calls
    it (a fresh list of every running ref each time): what grows with the number of actors on the Ray side."""
    import ray

    @ray.remote(num_cpus=0)
    class Blocker:
        def block(self, _: int) -> None:
            time.sleep(3600)

    blocker = Blocker.remote()
    ready = ray.put(0)
    out = {}
    try:
        for n in counts:
            refs = [blocker.block.remote(i) for i in range(n - 1)] + [ready]
            ray.wait(refs, num_returns=1, timeout=10.0)
            started = time.process_time()
            for _ in range(calls):
                ray.wait(list(refs), num_returns=1, timeout=1.0)
            out[n] = (time.process_time() - started) / calls * 1000
    finally:
        ray.kill(blocker)
    return out


def fill_cpu(shards: list[Shard], actors: int, in_flight: int, affinity: bool = True) -> float:
    """Driver CPU (us) per shard of the real Dispatcher._fill with `actors` ready stub actors (no Ray calls):
    one shard comes back (a random one), _fill refills, until the queue is empty."""
    from sdbatch.engine.dispatch import Dispatcher, _Slot

    class Method:
        def remote(self, *args):
            return object()

    class Handle:
        render_shard = Method()

    rng = random.Random(0)
    dispatcher = Dispatcher(lambda name: Handle(), actors, in_flight, 3, make_task=lambda shard: None,
                            events=None, affinity=affinity)
    queue = ShardQueue(shards, affinity, dispatcher.holdings)
    dispatcher.slots = [_Slot(f"actor-{i}", Handle(), ready=True) for i in range(actors)]
    dispatcher._fill(queue)  # the first round, not timed
    running = list(dispatcher.running)
    spent, dispatched = 0.0, 0
    while queue:
        index = rng.randrange(len(running))
        running[index], running[-1] = running[-1], running[index]
        slot, _ = dispatcher.running.pop(running.pop())
        slot.in_flight -= 1
        before = len(dispatcher.running)
        started = time.process_time()
        dispatcher._fill(queue)
        spent += time.process_time() - started
        added = len(dispatcher.running) - before
        running += list(itertools.islice(reversed(dispatcher.running), added))
        dispatched += added
    return spent / dispatched * 1e6
