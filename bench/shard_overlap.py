"""Shard ends off the device's path: one RenderActor fed one call at a time (A) against two calls in flight (B).

Both sides use the same actor class Ray runs (in-process; the calls come from a thread pool, as Ray runs an
actor with max_concurrency=2) and write to a local store that answers every request after a fixed latency, as
an object store does from a rented GPU box. Reported per side: images/s, and the device's idle time between
one shard's rendering phase and the next (listing, last image writes, tar, metadata and marker waiting on
storage). Rounds alternate AB, BA... on one warm actor per side.

    .venv/bin/python bench/shard_overlap.py                      # CPU, tiny model: ~4 min on 2 cores
    .venv/bin/python bench/shard_overlap.py --layout webdataset
    .venv/bin/python bench/shard_overlap.py --quick              # one round, 2 shards: checks the harness
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sdbatch.store.local import LocalStore  # noqa: E402


class LatencyStore(LocalStore):
    """A local store whose every request takes `latency` seconds more, plus bytes / `bandwidth` for writes."""

    def __init__(self, root: str, latency: float, bandwidth: float):
        super().__init__(root)
        self.latency, self.bandwidth = latency, bandwidth

    def _wait(self, size: int = 0) -> None:
        time.sleep(self.latency + size / self.bandwidth)

    def put(self, key, data):
        self._wait(len(data))
        return super().put(key, data)

    def put_once(self, key, data):
        self._wait(len(data))
        return super().put_once(key, data)

    def get(self, key):
        self._wait()
        return super().get(key)

    def exists(self, key):
        self._wait()
        return super().exists(key)

    def list(self, prefix=""):
        self._wait()
        return super().list(prefix)


def make_actor(root: str, args):
    from sdbatch.engine.actor import RenderActor
    from sdbatch.settings import RendererSettings

    actor = RenderActor(LatencyStore(root, args.latency_ms / 1000, args.bandwidth_mbs * 1e6),
                        RendererSettings(batch_size=args.batch, device="cpu"))
    actor.warm("tiny:sd15")
    phases: list[tuple[float, float]] = []  # the device's busy spans, as (start, end)
    on_device = actor._on_device

    def timed(work):
        started = time.perf_counter()
        try:
            return on_device(work)
        finally:
            phases.append((started, time.perf_counter()))

    actor._on_device = timed
    return actor, phases


def run_side(actor, phases, tasks, in_flight: int) -> dict:
    phases.clear()
    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as calls:
        results = list(calls.map(actor.render_shard, tasks))  # at most `in_flight` calls run at once
    wall = time.perf_counter() - started
    assert all(r.committed for r in results) and sum(r.rows_ok for r in results) == sum(len(t.rows) for t in tasks)
    spans = sorted(phases)
    idle = [max(0.0, nxt[0] - cur[1]) for cur, nxt in zip(spans, spans[1:])]
    return {"images_per_second": sum(r.rows_ok for r in results) / wall, "wall": wall,
            "idle_per_shard": statistics.mean(idle) if idle else 0.0}


def shard_tasks(round_: int, side: str, args):
    from sdref import bench_rows

    from sdbatch.tasks import ShardTask

    rows = [{**row, "negative_prompt": "", "model": "tiny:sd15", "width": args.size, "height": args.size,
             "steps": args.steps, "scheduler": None, "guidance_scale": 7.5, "loras": [], "controlnets": [],
             "vae": None} for row in bench_rows(args.shards * args.rows)]
    return [ShardTask(f"{side}{round_}-{i:03d}", f"{side}{round_}", tuple(rows[i * args.rows:(i + 1) * args.rows]),
                      "png", 95, layout=args.layout) for i in range(args.shards)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--rows", type=int, default=8, help="rows per shard")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--layout", choices=("files", "webdataset"), default="files")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="added to every storage request")
    parser.add_argument("--bandwidth-mbs", type=float, default=100.0, help="write bandwidth, MB/s")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.shards = 1, 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    print(f"shard_overlap: cpu, {platform.processor() or platform.machine()}, nproc {os.cpu_count()}, torch "
          f"{torch.__version__}; tiny:sd15 {args.size}x{args.size}, {args.steps} steps, batch {args.batch}; "
          f"{args.shards} shards of {args.rows} rows, {args.layout} layout; storage {args.latency_ms:g} ms per "
          f"request, {args.bandwidth_mbs:g} MB/s; {args.rounds} round(s)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="sdbatch-overlap-"))
    sides = {"A": (*make_actor(str(work / "A"), args), 1), "B": (*make_actor(str(work / "B"), args), 2)}
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    for round_ in range(args.rounds):
        for side in ("AB" if round_ % 2 == 0 else "BA"):
            actor, phases, in_flight = sides[side]
            result = run_side(actor, phases, shard_tasks(round_, side, args), in_flight)
            runs[side].append(result)
            print(f"round {round_ + 1} {side} ({in_flight} in flight): {result['images_per_second']:.3f} img/s, "
                  f"device idle {result['idle_per_shard'] * 1000:.0f} ms between shards", flush=True)
    ratios = [b["images_per_second"] / a["images_per_second"] for a, b in zip(runs["A"], runs["B"])]
    for side in "AB":
        print(f"{side}: {statistics.median(r['images_per_second'] for r in runs[side]):.3f} img/s, device idle "
              f"{statistics.median(r['idle_per_shard'] for r in runs[side]) * 1000:.0f} ms between shards (medians)")
    print(f"per-round B/A: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"overlap_speedup: {statistics.median(ratios):.3f}")
    os._exit(0)  # the actors' pools; the figures are out


if __name__ == "__main__":
    sys.exit(main())
