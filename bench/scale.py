"""The driver and the output at scale: preparation against a bare read, commits first vs last, status, results.

Each measurement runs in a fresh child process, so its peak RSS is its own. Run from the repository root:
    .venv/bin/python bench/scale.py --rows 1000000 --rows 10000000 [--s3-shards 3000]
    .venv/bin/python bench/scale.py --skip prepare --skip dispatch --skip commits --skip reads \
        --post-rows 10000000    # compact and export on one driver vs as Ray tasks (postprocess_scale.py)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "a red fox jumps over the lazy dog in bright morning light castle river forest".split()
VARIANTS = 6
CHUNK_ROWS = 1 << 20


def write_manifest(path: str, rows: int) -> None:
    """6 variants (steps), 6-word prompts, ids and one label; written a chunk at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    words = np.array(WORDS)
    writer = None
    for start in range(0, rows, CHUNK_ROWS):
        n = min(CHUNK_ROWS, rows - start)
        index = np.arange(start, start + n)
        picks = words[rng.integers(0, len(words), size=(n, 6))]
        prompts = [" ".join(p) for p in picks]
        table = pa.table({"id": pa.array(np.char.add("img-", index.astype(str))),
                          "prompt": prompts, "steps": pa.array(20 + index % VARIANTS),
                          "label": pa.array(np.char.add("class-", (index % 100).astype(str)))})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def child(code: str, *args: str) -> dict:
    """Run a measurement in a fresh interpreter; it prints one JSON line, to which its peak RSS is added
    (VmHWM: ru_maxrss would carry over this process's own peak through fork and exec)."""
    program = (f"import json, sys, time\nsys.path.insert(0, {ROOT!r})\n{code}\n"
               "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
               "out['peak_rss_mb'] = round(int(hwm) / 1024, 1)\n"
               "print(json.dumps(out))")
    done = subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


READ = """
import pyarrow.parquet as pq
t0 = time.perf_counter(); table = pq.read_table(sys.argv[1]); out = {'seconds': time.perf_counter() - t0}
"""

PREPARE = """
from sdbatch.run.driver import SubmitRequest, prepare
from sdbatch.plan.planned import PlannedRows
from sdbatch.spec import load_spec
t0 = time.perf_counter()
spec = load_spec(None, {'defaults.model': 'tiny:sd15'})
prepared = prepare(SubmitRequest(sys.argv[1], sys.argv[2], spec))
first = PlannedRows(prepared.planned.planned).rows(prepared.plan.shards[0])  # what the first dispatch reads
prepared.close()
out = {'seconds': time.perf_counter() - t0, 'shards': len(prepared.plan.shards), 'first_rows': len(first)}
"""


PLAN = """
import tempfile
from sdbatch.run.estimate import Rates, estimate
from sdbatch.plan.planned import plan_manifest
from sdbatch.settings import RowDefaults
t0 = time.perf_counter()
with tempfile.TemporaryDirectory() as workdir:
    plan = plan_manifest(sys.argv[1], RowDefaults(model='tiny:sd15'), 32, workdir, write=False).plan
result = estimate(plan, 8, Rates(3.0, 2.5, 0.0), True, 2)
out = {'seconds': time.perf_counter() - t0, 'shards': result.shards}
"""


def bench_prepare(rows: int, tmp: str) -> dict:
    path = os.path.join(tmp, f"manifest-{rows}.parquet")
    started = time.perf_counter()
    write_manifest(path, rows)
    print(f"  wrote {rows:,} rows in {time.perf_counter() - started:.1f} s ({os.path.getsize(path) >> 20} MiB)")
    read = child(READ, path)
    prep = child(PREPARE, path, os.path.join(tmp, f"out-{rows}"))
    plan = child(PLAN, path)
    return {"rows": rows, "read_s": read["seconds"], "read_rss_mb": read["peak_rss_mb"],
            "prepare_s": prep["seconds"], "prepare_rss_mb": prep["peak_rss_mb"], "shards": prep["shards"],
            "ratio": prep["seconds"] / read["seconds"], "plan_s": plan["seconds"], "plan_rss_mb": plan["peak_rss_mb"],
            "plan_ratio": plan["seconds"] / read["seconds"]}


COMMIT = """
from sdbatch.output.commits import MarkerIndex, commit_shard
from sdbatch.store import open_store
store_uri, shards, shard_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = open_store(store_uri)
index = MarkerIndex(store, interval=60)
times = []
for n in range(shards):
    rows = [{'id': f'{n}-{k}', 'shard': f'{n:07d}', 'attempt': 'a1', 'status': 'ok', 'image': 'x'}
            for k in range(shard_size)]
    t0 = time.perf_counter()
    index.add(commit_shard(store, f'{n:07d}', 'a1', rows))
    times.append(time.perf_counter() - t0)
index.write()
head, tail = times[:1000], times[-1000:]
out = {'shards': shards, 'first_ms': 1000 * sum(head) / len(head), 'last_ms': 1000 * sum(tail) / len(tail),
       'total_s': sum(times)}
"""


def bench_commits(store_uri: str, shards: int, shard_size: int) -> dict:
    result = child(COMMIT, store_uri, str(shards), str(shard_size))
    result["ratio"] = result["last_ms"] / result["first_ms"]
    return result


OUTPUT_READS = """
from sdbatch.output.commits import read_markers
from sdbatch.output.job import run_counts
from sdbatch.output.results import compact, open_results, read_results
from sdbatch.store.local import LocalStore
store = LocalStore(sys.argv[1]); what = sys.argv[2]
t0 = time.perf_counter()
if what == 'status':
    counts = run_counts(store); out = {'rows_ok': counts['rows_ok']}
elif what == 'resume-no-index':
    out = {'markers': read_markers(store, refresh=True).num_rows}
elif what == 'resume':
    out = {'markers': read_markers(store, refresh=True).num_rows}
elif what == 'compact':
    out = {'parts': len(compact(store)['parts'])}
elif what == 'open_results':
    n = 0
    for batch in open_results(store).to_batches(columns=['id', 'status', 'group']):
        n += batch.num_rows
    out = {'rows': n}
elif what == 'read_results':
    out = {'rows': read_results(store).num_rows}
out['seconds'] = time.perf_counter() - t0
"""


def bench_output_reads(rows: int, tmp: str) -> list[tuple[str, dict]]:
    """A finished 1-shard-per-32-rows output of `rows` rows, committed as actors would, then read."""
    root = os.path.join(tmp, f"run-{rows}")
    child("""
from tests.support.runs import synthetic_run
synthetic_run(__import__('pathlib').Path(sys.argv[1]), int(sys.argv[2]), variants=6, shard_size=32)
out = {}
""", root, str(rows))
    out = [("resume, no index (a GET per marker, then indexed)", child(OUTPUT_READS, root, "resume-no-index")),
           ("resume, indexed", child(OUTPUT_READS, root, "resume")),
           ("status, indexed", child(OUTPUT_READS, root, "status")),
           ("read_results before compaction", child(OUTPUT_READS, root, "read_results")),
           ("compact", child(OUTPUT_READS, root, "compact")),
           ("open_results scan (compacted)", child(OUTPUT_READS, root, "open_results")),
           ("read_results (compacted)", child(OUTPUT_READS, root, "read_results"))]
    return out


DISPATCH = """
sys.path.insert(0, sys.argv[3])
from scheduling.driver import driver_cpu_per_shard
shards, actors = int(sys.argv[1]), int(sys.argv[2])
out = driver_cpu_per_shard(shards, actors, 0.0, 2, variants=6, shard_size=32, seed=0, wait_refs=actors * 2)
out.pop('wait_ms', None)
"""


def bench_dispatch(shards: int, actors: int) -> dict:
    """The real Dispatcher handing every shard (tasks read back from a planned file) to sleep-actors."""
    return child(DISPATCH, str(shards), str(actors), os.path.join(ROOT, "bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="manifest sizes for preparation (repeatable)")
    parser.add_argument("--output-rows", type=int, default=1_000_000, help="rows of the output read back")
    parser.add_argument("--local-shards", type=int, default=31_250, help="shards committed to a folder")
    parser.add_argument("--s3-shards", type=int, default=0, help="shards committed to SeaweedFS (0: skip)")
    parser.add_argument("--dispatch-shards", type=int, default=31_250, help="shards dispatched to sleep-actors")
    parser.add_argument("--actors", type=int, default=8, help="sleep-actors on the private local Ray")
    parser.add_argument("--post-rows", type=int, action="append", default=[],
                        help="rows of an output compacted and exported on one driver and as Ray tasks (repeatable)")
    parser.add_argument("--post-shard-size", type=int, default=1000, help="rows per shard of that output")
    parser.add_argument("--skip", action="append", default=[],
                        choices=["prepare", "dispatch", "commits", "reads"])
    args = parser.parse_args()
    print(f"conditions: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}; each figure from a fresh process")
    with tempfile.TemporaryDirectory(prefix="sdbatch-scale-") as tmp:
        if "prepare" not in args.skip:
            for rows in args.rows or [1_000_000]:
                r = bench_prepare(rows, tmp)
                print(f"{rows:,} rows: bare read_table {r['read_s']:.2f} s, peak {r['read_rss_mb']:.0f} MB; "
                      f"submit's prepare {r['prepare_s']:.1f} s ({r['ratio']:.1f}x), "
                      f"peak {r['prepare_rss_mb']:.0f} MB, "
                      f"{r['shards']:,} shards; sdbatch plan {r['plan_s']:.1f} s ({r['plan_ratio']:.1f}x), "
                      f"peak {r['plan_rss_mb']:.0f} MB")
        if "dispatch" not in args.skip:
            r = bench_dispatch(args.dispatch_shards, args.actors)
            print(f"dispatch of {r['shards']:,} shards of 32 rows to {r['actors']} sleep-actors on local Ray: "
                  f"{r['wall_s']:.1f} s ({r['shards_per_s']:.0f} shards/s), driver CPU {r['ms_per_shard']:.2f} ms "
                  f"per shard, driver peak {r['peak_rss_mb']:.0f} MB")
        if "commits" not in args.skip:
            r = bench_commits(os.path.join(tmp, "commits"), args.local_shards, 32)
            print(f"commits to a folder, {r['shards']:,} shards: first 1,000 {r['first_ms']:.2f} ms/shard, "
                  f"last 1,000 {r['last_ms']:.2f} ms/shard; last/first {r['ratio']:.2f}")
            if args.s3_shards:
                print(bench_s3_commits(args.s3_shards, tmp))
        if "reads" not in args.skip:
            for name, r in bench_output_reads(args.output_rows, tmp):
                extra = {k: v for k, v in r.items() if k not in ("seconds", "peak_rss_mb")}
                print(f"{args.output_rows:,}-row output, {name}: {r['seconds']:.2f} s, "
                      f"peak {r['peak_rss_mb']:.0f} MB {extra}")
        for rows in args.post_rows:
            from postprocess_scale import bench_post_processing  # beside this script: its folder is on sys.path

            print("\n".join(bench_post_processing(rows, tmp, args.post_shard_size)), flush=True)


def bench_s3_commits(shards: int, tmp: str) -> str:
    sys.path.insert(0, ROOT)
    from tests.support.servers import SeaweedServer

    os.makedirs(os.path.join(tmp, "weed"))
    with SeaweedServer(os.path.join(tmp, "weed")) as server:
        os.environ.update(server.env)  # the children's default AWS chain
        bucket = server.create_bucket()
        os.environ["AWS_ENDPOINT_URL_S3"] = server.endpoint
        r = bench_commits(f"s3://{bucket}/run", shards, 32)
        status = child("""
from sdbatch.output.commits import read_markers
from sdbatch.store import open_store
store = open_store(sys.argv[1]); gets = []
get = store.get
store.get = lambda key: gets.append(key) or get(key)
t0 = time.perf_counter(); n = read_markers(store).num_rows
out = {'seconds': time.perf_counter() - t0, 'markers': n, 'gets': len(gets)}
""", f"s3://{bucket}/run")
    return (f"commits to SeaweedFS, {r['shards']:,} shards: first 1,000 {r['first_ms']:.2f} ms/shard, last 1,000 "
            f"{r['last_ms']:.2f} ms/shard; last/first {r['ratio']:.2f}; resume read of its markers "
            f"{status['seconds']:.2f} s with {status['gets']} GETs for {status['markers']:,} markers")


if __name__ == "__main__":
    main()
