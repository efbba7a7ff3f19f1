"""Dispatch policy benchmark: a discrete-event simulation of 1,000 GPUs, plus the real driver's CPU per shard.

Part 1 (no Ray, no torch): the real policy (sdbatch.engine.policy: ShardQueue, Holdings) drives virtual
GPUs the way the real Dispatcher does (2 shards in flight per actor, actors holding the fewest variants
choose first, one refill per finished shard). Each virtual GPU keeps the render side's caches (LoRA
adapters resident in the pipeline, parsed LoRAs in a host-memory LRU, ControlNets on the device and
parked in host memory) and pays modelled costs for what it has to load. Affinity on and off run on the
same shards with the same per-shard render times, side by side.

Part 2 (local Ray): the real Dispatcher feeds sleep-actors (same warm/render_shard interface as
RenderActor) a few thousand shards whose tasks are built by the real plan.shard_rows; the driver
process's CPU time (time.process_time) per dispatched shard is reported.

    .venv/bin/python bench/scheduler.py            # ~2 min on 2 cores
    .venv/bin/python bench/scheduler.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import collections
import heapq
import itertools
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdbatch.engine.policy import HELD_VARIANTS, Holdings, ShardQueue, depth, remember
from sdbatch.plan import Shard, Variant
from sdbatch.settings import OutputSettings

MODEL = "runwayml/stable-diffusion-v1-5"
CONTROLNET_NAMES = ("canny", "depth", "openpose", "softedge", "scribble", "seg", "normal", "lineart")
MB = 1 << 20


# ---------------------------------------------------------------------------------------------- workload

@dataclass(frozen=True)
class Mix:
    """Which LoRA and ControlNet a row uses: independent draws from skewed popularities."""

    loras: int = 40
    controlnets: int = 3
    no_lora: float = 0.30  # share of rows with no LoRA; the rest: LoRA k (1..loras) with weight 1/k (Zipf, s=1)
    no_controlnet: float = 0.70  # share of rows with no ControlNet; the rest: ControlNet k with weight 1/k

    def lora_weights(self) -> list[float]:
        zipf = [1 / k for k in range(1, self.loras + 1)]
        total = sum(zipf)
        return [self.no_lora] + [(1 - self.no_lora) * w / total for w in zipf]

    def controlnet_weights(self) -> list[float]:
        zipf = [1 / k for k in range(1, self.controlnets + 1)]
        total = sum(zipf)
        return [self.no_controlnet] + [(1 - self.no_controlnet) * w / total for w in zipf]

    def describe(self) -> str:
        lw, cw = self.lora_weights(), self.controlnet_weights()
        return (f"rows draw a LoRA and a ControlNet independently. LoRA: none {lw[0]:.0%}, else one of "
                f"{self.loras} (weight 0.8) with popularity 1/rank (top {lw[1]:.1%} of rows, last "
                f"{lw[-1]:.2%}). ControlNet: none {cw[0]:.0%}, else one of {self.controlnets} with popularity "
                f"1/rank ({', '.join(f'{w:.1%}' for w in cw[1:])} of rows). Variant = (LoRA, ControlNet): "
                f"up to {(self.loras + 1) * (self.controlnets + 1)}; one base model, 512x512, 30 steps")


@dataclass(frozen=True)
class Costs:
    """Modelled, not measured: GPU seconds for rendering and for loading what a variant needs."""

    row_s: float = 0.30  # SD1.5 512x512, 30 steps, per row on an H100-class GPU (batched)
    controlnet_factor: float = 1.4  # a ControlNet row runs the ControlNet encoder copy at every step too
    shard_jitter: float = 0.10  # per-shard render time x lognormal(0, this): batching, I/O, encode, clocks
    lora_mb: tuple[float, float] = (10, 200)  # LoRA file sizes, uniform per LoRA (SD1.5 LoRAs)
    lora_from_cache_s: tuple[float, float] = (0.05, 0.20)  # parsed LoRA in host memory -> pipeline; by size
    lora_from_disk_s: tuple[float, float] = (0.5, 2.0)  # read + parse + load; by size
    controlnet_from_cpu_s: tuple[float, float] = (0.1, 0.3)  # parked ControlNet moved back; uniform
    controlnet_from_disk_s: tuple[float, float] = (1.0, 3.0)  # from_pretrained + to(device); uniform
    # The render side's cache sizes (sdbatch.render.variants.VariantSettings defaults).
    lora_cache_bytes: int = 2 << 30
    loras_resident: int = 8
    controlnets_on_device: int = 2
    controlnets_on_cpu: int = 4

    def describe(self) -> list[str]:
        return [
            f"render: {self.row_s} s per row (x{self.controlnet_factor} with a ControlNet), x lognormal(0, "
            f"{self.shard_jitter}) per shard; same per-shard times in every run",
            f"LoRA files {self.lora_mb[0]:.0f}-{self.lora_mb[1]:.0f} MB (uniform per LoRA); load from host cache "
            f"{self.lora_from_cache_s[0] * 1000:.0f}-{self.lora_from_cache_s[1] * 1000:.0f} ms, from disk "
            f"{self.lora_from_disk_s[0]}-{self.lora_from_disk_s[1]} s (both by file size); activating a resident "
            "adapter: free",
            f"ControlNet load from disk {self.controlnet_from_disk_s[0]}-{self.controlnet_from_disk_s[1]} s, "
            f"moved back from host memory {self.controlnet_from_cpu_s[0]}-{self.controlnet_from_cpu_s[1]} s "
            "(uniform per load)",
            f"per GPU: {self.loras_resident} LoRA adapters resident, {self.lora_cache_bytes / 2**30:.0f} GiB host "
            f"LRU of parsed LoRAs, {self.controlnets_on_device} ControlNets on the device + "
            f"{self.controlnets_on_cpu} parked (render-side defaults); base model warm before the first shard",
            "not modelled: model warm-up, dispatch latency, storage stalls, stragglers, failures",
        ]


@dataclass
class Workload:
    shards: list[Shard]
    work: dict[str, float]  # shard id -> render seconds
    lora_mb: dict[str, float]  # LoRA path -> size
    rows: int

    @property
    def variants(self) -> int:
        return len({s.variant for s in self.shards})


def make_workload(rows: int, mix: Mix, costs: Costs, shard_size: int, seed: int) -> Workload:
    """Rows drawn from the mix in random manifest order, planned like plan.plan_shards: variant groups in
    order of first appearance, cut into shards of shard_size (built directly: the rows' other columns
    do not matter here, and normalizing a million-row table would dominate the run)."""
    rng = random.Random(seed)
    lora_paths = [f"/loras/style-{k:02d}.safetensors" for k in range(1, mix.loras + 1)]
    controlnets = [f"lllyasviel/sd-controlnet-{CONTROLNET_NAMES[k % len(CONTROLNET_NAMES)]}"
                   + (f"-{k}" if k >= len(CONTROLNET_NAMES) else "") for k in range(mix.controlnets)]
    lora_pick = rng.choices(range(mix.loras + 1), weights=mix.lora_weights(), k=rows)
    cn_pick = rng.choices(range(mix.controlnets + 1), weights=mix.controlnet_weights(), k=rows)
    counts: dict[tuple[int, int], int] = {}
    for key in zip(lora_pick, cn_pick, strict=True):
        counts[key] = counts.get(key, 0) + 1  # dict order: first appearance, as in plan.variant_groups
    shards: list[Shard] = []
    work: dict[str, float] = {}
    position = 0
    for (lora, cn), n in counts.items():
        variant = Variant(MODEL, 512, 512, 30, None, 7.5,
                          ((lora_paths[lora - 1], 0.8),) if lora else (),
                          ((controlnets[cn - 1], 1.0),) if cn else ())
        for start in range(0, n, shard_size):
            size = min(shard_size, n - start)
            shard = Shard(f"{len(shards):06d}", variant, tuple(range(position, position + size)))
            position += size
            shards.append(shard)
            factor = costs.controlnet_factor if cn else 1.0
            work[shard.shard_id] = size * costs.row_s * factor * rng.lognormvariate(0, costs.shard_jitter)
    lora_mb = {path: rng.uniform(*costs.lora_mb) for path in lora_paths}
    return Workload(shards, work, lora_mb, rows)


# ---------------------------------------------------------------------------------------------- one GPU

class GpuCaches:
    """What one virtual GPU has loaded, with the render side's eviction rules; prepare() returns seconds."""

    def __init__(self, costs: Costs, lora_mb: dict[str, float]):
        self.costs, self.lora_mb = costs, lora_mb
        self.resident: collections.OrderedDict[str, None] = collections.OrderedDict()  # adapters, LRU first
        self.host: collections.OrderedDict[str, float] = collections.OrderedDict()  # parsed LoRAs -> bytes
        self.on_device: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.parked: collections.OrderedDict[str, None] = collections.OrderedDict()

    def prepare(self, variant: Variant, rng: random.Random, tally: collections.Counter) -> float:
        seconds = 0.0
        names = [path for path, _ in variant.loras]
        for path in names:
            if path in self.resident:
                self.resident.move_to_end(path)
                continue
            low, high = self.costs.lora_mb
            share = (self.lora_mb[path] - low) / (high - low)
            if path in self.host:
                self.host.move_to_end(path)
                span, kind = self.costs.lora_from_cache_s, "lora_from_cache"
            else:
                span, kind = self.costs.lora_from_disk_s, "lora_from_disk"
                self.host[path] = self.lora_mb[path] * MB
                while sum(self.host.values()) > self.costs.lora_cache_bytes:
                    self.host.popitem(last=False)
            seconds += span[0] + (span[1] - span[0]) * share
            tally[kind] += 1
            while len(self.resident) >= self.costs.loras_resident:
                victim = next(name for name in self.resident if name not in names)
                del self.resident[victim]
            self.resident[path] = None
        keep = [model for model, _ in variant.controlnets]
        for model in keep:
            if model in self.on_device:
                self.on_device.move_to_end(model)
                continue
            if self.parked.pop(model, 0) is None:
                seconds += rng.uniform(*self.costs.controlnet_from_cpu_s)
                tally["controlnet_from_cpu"] += 1
            else:
                seconds += rng.uniform(*self.costs.controlnet_from_disk_s)
                tally["controlnet_from_disk"] += 1
            while len(self.on_device) >= self.costs.controlnets_on_device:
                victim = next(name for name in self.on_device if name not in keep)
                del self.on_device[victim]
                self.parked[victim] = None
            while len(self.parked) > self.costs.controlnets_on_cpu:
                self.parked.popitem(last=False)
            self.on_device[model] = None
        return seconds


# ---------------------------------------------------------------------------------------------- simulation

@dataclass
class SimResult:
    label: str
    gpus: int
    makespan: float = 0.0
    ideal: float = 0.0
    render_s: float = 0.0
    swap_s: float = 0.0
    first_idle_for_good: float = 0.0
    switches: int = 0  # shards given to an actor whose `held` did not have their variant
    switches_by_variant: collections.Counter = field(default_factory=collections.Counter)
    loads: collections.Counter = field(default_factory=collections.Counter)
    dispatches: int = 0
    policy_s: float = 0.0  # time in the policy (pick + bookkeeping), all dispatches
    policy_max_s: float = 0.0
    wall_s: float = 0.0
    assignment: list[tuple[str, int]] = field(default_factory=list)  # (shard id, actor), dispatch order

    @property
    def ratio(self) -> float:
        return self.makespan / self.ideal

    @property
    def idle_tail(self) -> float:
        return self.makespan - self.first_idle_for_good

    @property
    def idle_fraction(self) -> float:
        return 1 - (self.render_s + self.swap_s) / (self.gpus * self.makespan)


def simulate(workload: Workload, costs: Costs, gpus: int, in_flight: int, affinity: bool,
             bookkeeping: str = "holdings", seed: int = 0, label: str = "") -> SimResult:
    """Virtual GPUs fed as the Dispatcher feeds actors; `bookkeeping`: "holdings" (the Dispatcher's,
    incremental) or "recount" (the pre-Holdings Dispatcher: a Counter over every other actor's held list
    per dispatch), to time the two on identical runs."""
    started = time.perf_counter()
    result = SimResult(label, gpus)
    holdings = Holdings()
    queue = ShardQueue(workload.shards, affinity, holdings if bookkeeping == "holdings" else None)
    held_lists: list[list[Variant]] = [[] for _ in range(gpus)]  # "recount" only
    rng = random.Random(seed)
    caches = [GpuCaches(costs, workload.lora_mb) for _ in range(gpus)]
    pending: list[collections.deque[Shard]] = [collections.deque() for _ in range(gpus)]
    busy = [False] * gpus
    last_finish = [0.0] * gpus
    events: list[tuple[float, int]] = []  # (finish time, actor)
    hungry = set(range(gpus))  # actors with fewer than in_flight shards (the Dispatcher's "hungry" slots)
    clock = time.perf_counter

    def start(actor: int, now: float) -> None:
        shard = pending[actor].popleft()
        swap = caches[actor].prepare(shard.variant, rng, result.loads)
        render = workload.work[shard.shard_id]
        result.swap_s += swap
        result.render_s += render
        busy[actor] = True
        heapq.heappush(events, (now + swap + render, actor))

    def held_of(actor: int) -> list[Variant] | tuple:
        return held_lists[actor] if bookkeeping == "recount" else holdings.held(actor)

    def fill(now: float) -> None:
        for actor in sorted(hungry, key=lambda a: (len(held_of(a)), a)):  # fewest held first, then slot order
            while queue and len(pending[actor]) + busy[actor] < depth(len(queue), gpus, in_flight):
                before = tuple(held_of(actor))
                t0 = clock()
                if bookkeeping == "recount":
                    own = held_lists[actor]
                    elsewhere = collections.Counter(v for b, other in enumerate(held_lists) if b != actor
                                                    for v in other)
                    shard = queue.next_for(own, elsewhere)
                    remember(own, shard.variant)
                else:
                    shard = queue.take(actor)
                spent = clock() - t0
                result.policy_s += spent
                result.policy_max_s = max(result.policy_max_s, spent)
                result.dispatches += 1
                if shard.variant not in before:
                    result.switches += 1
                    result.switches_by_variant[shard.variant] += 1
                result.assignment.append((shard.shard_id, actor))
                pending[actor].append(shard)
                if not busy[actor]:
                    start(actor, now)
            if len(pending[actor]) + busy[actor] >= in_flight:
                hungry.discard(actor)

    fill(0.0)
    while events:
        now, actor = heapq.heappop(events)
        busy[actor] = False
        last_finish[actor] = now
        if pending[actor]:
            start(actor, now)
        hungry.add(actor)
        fill(now)  # one finished shard, one refill: the Dispatcher's loop (ray.wait num_returns=1)
    assert not queue and result.dispatches == len(workload.shards), "every shard dispatched once"
    result.makespan = max(last_finish)
    result.first_idle_for_good = min(last_finish)
    result.ideal = sum(workload.work.values()) / gpus
    result.wall_s = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------------------------------- driver on Ray

def driver_cpu_per_shard(shards: int, actors: int, sleep_s: float, in_flight: int, variants: int,
                         shard_size: int, seed: int, wait_refs: int) -> dict:
    """The real Dispatcher feeding sleep-actors on a private local Ray; driver CPU per dispatched shard."""
    import pyarrow as pa
    import ray

    from sdbatch.engine.dispatch import Dispatcher
    from sdbatch.output import new_attempt_id
    from sdbatch.plan import plan_shards, shard_rows
    from sdbatch.tasks import ShardResult, ShardTask
    from sdbatch.variant_columns import CONTROLNET_TYPE, LORA_TYPE

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
    plan = plan_shards(table, shard_size)

    def make_task(shard: Shard) -> ShardTask:  # as driver.execute builds them
        return ShardTask(shard.shard_id, new_attempt_id(), tuple(shard_rows(table, shard)), "png", 95)

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
    done = len(report.results)
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


# ---------------------------------------------------------------------------------------------- report

def conditions() -> list[str]:
    import pyarrow

    versions = f"python {platform.python_version()}, pyarrow {pyarrow.__version__}"
    try:
        import ray

        versions += f", ray {ray.__version__}"
    except ImportError:
        pass
    return [f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), processor "
            f"{platform.processor() or 'unknown'!r}, {platform.system()} {platform.release()}; {versions}",
            f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}"]


def per_variant_line(result: SimResult, shards_by_variant: dict[Variant, int]) -> str:
    counts = [result.switches_by_variant.get(v, 0) for v in shards_by_variant]
    return (f"min {min(counts)} / median {statistics.median(counts):g} / mean {statistics.mean(counts):.1f} / "
            f"max {max(counts)}")


def describe_variant(variant: Variant) -> str:
    lora = variant.loras[0][0].rsplit("/", 1)[-1].removesuffix(".safetensors") if variant.loras else "-"
    cn = variant.controlnets[0][0].rsplit("-", 1)[-1] if variant.controlnets else "-"
    return f"lora {lora:<9} controlnet {cn:<8}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--loras", type=int, default=40)
    parser.add_argument("--controlnets", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=OutputSettings().shard_size,
                        help="rows per shard (default: sdbatch's own default)")
    parser.add_argument("--in-flight", type=int, default=2, help="shards queued per actor (the real default: 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra-seeds", type=int, default=4,
                        help="rerun affinity on/off on this many other seeds (workload and costs) for the spread")
    parser.add_argument("--no-recount", action="store_true",
                        help="skip the run timing the pre-Holdings bookkeeping (a Counter per dispatch)")
    parser.add_argument("--driver-shards", type=int, default=3000, help="0: skip the Ray driver measurement")
    parser.add_argument("--driver-actors", type=int, default=4)
    parser.add_argument("--driver-sleep-ms", type=float, default=10.0)
    parser.add_argument("--driver-in-flight", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run: 50 GPUs, 20,000 rows, "
                        "300 driver shards on 2 actors")
    args = parser.parse_args(argv)
    if args.quick:
        args.gpus, args.rows = min(args.gpus, 50), min(args.rows, 20_000)
        args.driver_shards, args.driver_actors = min(args.driver_shards, 300), min(args.driver_actors, 2)
        args.extra_seeds = min(args.extra_seeds, 1)

    mix, costs = Mix(args.loras, args.controlnets), Costs()
    workload = make_workload(args.rows, mix, costs, args.shard_size, args.seed)
    print("bench/scheduler.py: dispatch policy (sdbatch.engine.policy) in a discrete-event simulation")
    for line in conditions():
        print(f"  {line}")
    print(f"  workload: {args.rows:,} rows, {len(workload.shards):,} shards of <= {args.shard_size} rows, "
          f"{workload.variants} variants, {args.gpus:,} virtual GPUs, {args.in_flight} shards in flight per "
          f"actor, HELD_VARIANTS={HELD_VARIANTS}, seed {args.seed}")
    print(f"  mix: {mix.describe()}")
    print("  modelled costs (assumptions, not measured):")
    for line in costs.describe():
        print(f"    - {line}")
    print("  ideal = total render seconds / GPUs (no loads, no idle); makespan = last GPU done")
    print()

    runs = [simulate(workload, costs, args.gpus, args.in_flight, True, seed=args.seed, label="affinity on"),
            simulate(workload, costs, args.gpus, args.in_flight, False, seed=args.seed, label="affinity off"),
            simulate(workload, costs, args.gpus, 1, True, seed=args.seed, label="on, 1 in flight")]
    recount = None
    if not args.no_recount:
        recount = simulate(workload, costs, args.gpus, args.in_flight, True, bookkeeping="recount",
                           seed=args.seed, label="on, recount")
    on, off = runs[0], runs[1]

    width = 18
    print(f"{'':<34}" + "".join(f"{r.label:>{width}}" for r in runs))

    def row(name: str, cell) -> None:
        print(f"{name:<34}" + "".join(f"{cell(r):>{width}}" for r in runs))

    def gpu_s(r: SimResult) -> float:
        return r.gpus * r.makespan

    row("makespan (s)", lambda r: f"{r.makespan:,.1f}")
    row("ideal (s)", lambda r: f"{r.ideal:,.1f}")
    row("makespan / ideal", lambda r: f"{r.ratio:.3f}")
    row("variant switches (policy view)", lambda r: f"{r.switches:,}")
    row("loads, total", lambda r: f"{sum(r.loads.values()):,}")
    for kind in ("lora_from_disk", "lora_from_cache", "controlnet_from_disk", "controlnet_from_cpu"):
        row(f"  {kind.replace('_', ' ')}", lambda r, k=kind: f"{r.loads.get(k, 0):,}")
    row("load time, % of GPU time", lambda r: f"{r.swap_s / gpu_s(r):.2%}")
    row("idle tail (s)", lambda r: f"{r.idle_tail:,.1f}")
    row("idle tail, % of makespan", lambda r: f"{r.idle_tail / r.makespan:.1%}")
    row("GPU-idle fraction", lambda r: f"{r.idle_fraction:.2%}")
    row("policy us per dispatch (mean)", lambda r: f"{r.policy_s / r.dispatches * 1e6:,.1f}")
    row("simulation wall (s)", lambda r: f"{r.wall_s:.1f}")
    print()
    shards_by_variant = collections.Counter(s.variant for s in workload.shards)
    print(f"switches per variant ({len(shards_by_variant)} variants; floor: each variant at least once, each GPU "
          f"at least once: >= max({len(shards_by_variant)}, {args.gpus}) in total)")
    for r in (on, off):
        print(f"  {r.label:<13} {per_variant_line(r, shards_by_variant)}")
    print("  largest variants:                     shards   switches on   switches off")
    for variant, n in shards_by_variant.most_common(5):
        print(f"    {describe_variant(variant)}    {n:>8,} {on.switches_by_variant.get(variant, 0):>13,} "
              f"{off.switches_by_variant.get(variant, 0):>14,}")
    if args.extra_seeds:
        print()
        print("other seeds (new workload draw and per-shard times), makespan / ideal, load time % of GPU time:")
        for seed in range(args.seed + 1, args.seed + 1 + args.extra_seeds):
            other = make_workload(args.rows, mix, costs, args.shard_size, seed)
            pair = [simulate(other, costs, args.gpus, args.in_flight, affinity, seed=seed)
                    for affinity in (True, False)]
            print(f"  seed {seed}: {other.variants} variants, affinity on {pair[0].ratio:.3f} "
                  f"({pair[0].swap_s / (pair[0].gpus * pair[0].makespan):.2%}), off {pair[1].ratio:.3f} "
                  f"({pair[1].swap_s / (pair[1].gpus * pair[1].makespan):.2%})")
    print()
    print(f"policy cost per dispatch at {args.gpus:,} actors (affinity on, same run twice):")
    print(f"  Holdings (incremental):      mean {on.policy_s / on.dispatches * 1e6:8.1f} us, "
          f"max {on.policy_max_s * 1e3:.2f} ms, total {on.policy_s:.2f} s for {on.dispatches:,} shards")
    if recount is not None:
        same = recount.assignment == on.assignment and recount.makespan == on.makespan
        print(f"  recount (the old per-dispatch Counter of every other actor's held list): mean "
              f"{recount.policy_s / recount.dispatches * 1e6:8.1f} us, max {recount.policy_max_s * 1e3:.2f} ms, "
              f"total {recount.policy_s:.2f} s; identical assignments: {'yes' if same else 'NO'}")
        if not same:
            print("  ERROR: the two bookkeepings disagree")
            return 1
    rate = args.gpus / (args.shard_size * costs.row_s)
    print(f"  at {args.gpus:,} GPUs the driver dispatches ~{rate:.0f} shards/s ({args.shard_size}-row shards "
          f"at {costs.row_s} s/row)")
    print()

    driver = None
    if args.driver_shards:
        print(f"driver CPU on local Ray: real Dispatcher, {args.driver_actors} sleep-actors "
              f"({args.driver_sleep_ms:g} ms per shard), {args.driver_in_flight} in flight, tasks built by "
              "plan.shard_rows on a manifest-shaped table, ~"
              f"{args.driver_shards:,} shards of {args.shard_size} rows ...", flush=True)
        driver = driver_cpu_per_shard(args.driver_shards, args.driver_actors, args.driver_sleep_ms / 1000,
                                      args.driver_in_flight, variants=8, shard_size=args.shard_size,
                                      seed=args.seed, wait_refs=args.gpus * args.in_flight)
        print(f"  {driver['shards']:,} shards ({driver['variants']} variants) in {driver['wall_s']:.1f} s "
              f"({driver['shards_per_s']:.0f} shards/s); driver process CPU {driver['cpu_s']:.2f} s = "
              f"{driver['ms_per_shard']:.2f} ms per shard (time.process_time, all driver threads, from the "
              "first warm actor to the end)")
        small, big = args.driver_actors * args.driver_in_flight, args.gpus * args.in_flight
        fill_small = fill_cpu(workload.shards, args.driver_actors, args.driver_in_flight)
        fill_big = fill_cpu(workload.shards, args.gpus, args.in_flight)
        wait_small, wait_big = driver["wait_ms"][small], driver["wait_ms"][big]
        print(f"  what grows with the number of actors, measured without {args.gpus:,} processes:")
        print(f"    Dispatcher._fill, stub actors, part 1's shards: {fill_small:.1f} us per shard at "
              f"{args.driver_actors} actors, {fill_big:.1f} us at {args.gpus:,}")
        print(f"    ray.wait over the running refs (once per shard): {wait_small:.3f} ms at {small} refs, "
              f"{wait_big:.3f} ms at {big:,}")
        at_scale = driver["ms_per_shard"] + (fill_big - fill_small) / 1000 + (wait_big - wait_small)
        print(f"  estimate at {args.gpus:,} actors: {at_scale:.2f} ms per shard; at ~{rate:.0f} shards/s "
              f"that is {at_scale * rate / 1000:.0%} of one driver core")
        print(f"driver_ms_per_shard: {driver['ms_per_shard']:.2f}")
    print(f"makespan_ratio: {on.ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
