"""bench/scheduler.py's command line: runs the simulation and the driver measurement, prints the report."""

from __future__ import annotations

import argparse
import collections
import os
import platform
import statistics

from sdbatch.engine.policy import HELD_VARIANTS
from sdbatch.plan.shards import Variant
from sdbatch.settings import OutputSettings

from .driver import driver_cpu_per_shard, fill_cpu
from .simulation import SimResult, simulate
from .workload import Costs, Mix, Workload, make_workload

DESCRIPTION = ("Dispatch policy benchmark: a discrete-event simulation of 1,000 GPUs fed by sdbatch's dispatch "
               "rule, plus the real driver's CPU per shard on local Ray.")


def conditions() -> list[str]:
    import pyarrow

    versions = f"python {platform.python_version()}, pyarrow {pyarrow.__version__}"
    try:
        import ray

        versions += f", ray {ray.__version__}"
    except ImportError:
        pass
    return [(f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), processor "
             f"{platform.processor() or 'unknown'!r}, {platform.system()} {platform.release()}; {versions}"),
            f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}"]


def per_variant_line(result: SimResult, shards_by_variant: dict[Variant, int]) -> str:
    counts = [result.switches_by_variant.get(v, 0) for v in shards_by_variant]
    return (f"min {min(counts)} / median {statistics.median(counts):g} / mean {statistics.mean(counts):.1f} / "
            f"max {max(counts)}")


def describe_variant(variant: Variant) -> str:
    lora = variant.loras[0][0].rsplit("/", 1)[-1].removesuffix(".safetensors") if variant.loras else "-"
    cn = variant.controlnets[0][0].rsplit("-", 1)[-1] if variant.controlnets else "-"
    return f"lora {lora:<9} controlnet {cn:<8}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
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
    return args


def print_header(args: argparse.Namespace, mix: Mix, costs: Costs, workload: Workload) -> None:
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


def print_table(runs: list[SimResult]) -> None:
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
    row("policy.fill us per shard (mean)", lambda r: f"{r.policy_us_per_shard:,.1f}")
    row("simulation wall (s)", lambda r: f"{r.wall_s:.1f}")
    print()


def print_switches(on: SimResult, off: SimResult, workload: Workload, gpus: int) -> None:
    shards_by_variant = collections.Counter(s.variant for s in workload.shards)
    print(f"switches per variant ({len(shards_by_variant)} variants; floor: each variant at least once, each GPU "
          f"at least once: >= max({len(shards_by_variant)}, {gpus}) in total)")
    for r in (on, off):
        print(f"  {r.label:<13} {per_variant_line(r, shards_by_variant)}")
    print("  largest variants:                     shards   switches on   switches off")
    for variant, n in shards_by_variant.most_common(5):
        print(f"    {describe_variant(variant)}    {n:>8,} {on.switches_by_variant.get(variant, 0):>13,} "
              f"{off.switches_by_variant.get(variant, 0):>14,}")


def print_seeds(args: argparse.Namespace, mix: Mix, costs: Costs) -> None:
    print()
    print("other seeds (new workload draw and per-shard times), makespan / ideal, load time % of GPU time:")
    for seed in range(args.seed + 1, args.seed + 1 + args.extra_seeds):
        other = make_workload(args.rows, mix, costs, args.shard_size, seed)
        pair = [simulate(other, costs, args.gpus, args.in_flight, affinity, seed=seed) for affinity in (True, False)]
        print(f"  seed {seed}: {other.variants} variants, affinity on {pair[0].ratio:.3f} "
              f"({pair[0].swap_s / (pair[0].gpus * pair[0].makespan):.2%}), off {pair[1].ratio:.3f} "
              f"({pair[1].swap_s / (pair[1].gpus * pair[1].makespan):.2%})")


def print_policy_cost(on: SimResult, args: argparse.Namespace, costs: Costs) -> float:
    """Prints the policy's cost per shard in the affinity-on run; returns the shards per second to dispatch."""
    print(f"policy cost at {args.gpus:,} actors (affinity on): time inside policy.fill, every call, per shard "
          "handed out")
    print(f"  mean {on.policy_us_per_shard:8.1f} us per shard, longest refill call {on.policy_max_s * 1e3:.2f} ms, "
          f"total {on.policy_s:.2f} s for {on.dispatches:,} shards in {on.fill_calls:,} calls")
    rate = args.gpus / (args.shard_size * costs.row_s)
    print(f"  at {args.gpus:,} GPUs the driver dispatches ~{rate:.0f} shards/s ({args.shard_size}-row shards "
          f"at {costs.row_s} s/row)")
    print()
    return rate


def print_driver(args: argparse.Namespace, workload: Workload, rate: float) -> dict:
    print(f"driver CPU on local Ray: real Dispatcher, {args.driver_actors} sleep-actors "
          f"({args.driver_sleep_ms:g} ms per shard), {args.driver_in_flight} in flight, tasks built by "
          "planning.PlannedRows from a planned manifest file, ~"
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
    return driver


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mix, costs = Mix(args.loras, args.controlnets), Costs()
    workload = make_workload(args.rows, mix, costs, args.shard_size, args.seed)
    print_header(args, mix, costs, workload)
    runs = [simulate(workload, costs, args.gpus, args.in_flight, True, seed=args.seed, label="affinity on"),
            simulate(workload, costs, args.gpus, args.in_flight, False, seed=args.seed, label="affinity off"),
            simulate(workload, costs, args.gpus, 1, True, seed=args.seed, label="on, 1 in flight")]
    on, off = runs[0], runs[1]
    print_table(runs)
    print_switches(on, off, workload, args.gpus)
    if args.extra_seeds:
        print_seeds(args, mix, costs)
    print()
    rate = print_policy_cost(on, args, costs)
    if args.driver_shards:
        driver = print_driver(args, workload, rate)
        print(f"driver_ms_per_shard: {driver['ms_per_shard']:.2f}")
    print(f"makespan_ratio: {on.ratio:.2f}")
    return 0
