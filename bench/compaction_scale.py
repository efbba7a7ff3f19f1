"""Compaction at scale: a finished output built directly, compacted on the driver and as Ray tasks (scale.py
--compaction-rows N)."""

from __future__ import annotations

import os
import sys
import time

from scale import ROOT, VARIANTS, child


def build_output(root: str, rows: int, shard_size: int = 32) -> int:
    """A finished output of `rows` rows in shards of `shard_size`, as a run leaves it (manifest copy in row groups
    of ROW_GROUP_ROWS, a metadata file and a marker per shard, the marker index), written directly: commit_shard
    per shard would take longer than what is measured. Returns the shards."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, ROOT)
    from sdbatch.manifest.normalize import normalize
    from sdbatch.output.commits import MARKER_SCHEMA, RESULT_SCHEMA, json_bytes, marker_key, metadata_key, write_index
    from sdbatch.plan.planned import ROW_GROUP_ROWS
    from sdbatch.plan.shards import plan_shards
    from sdbatch.settings import RowDefaults
    from sdbatch.store.local import LocalStore

    index = np.arange(rows)
    table = pa.table({"id": pa.array(np.char.add("img-", index.astype(str))),
                      "prompt": pa.array(np.char.add("a red fox ", index.astype(str))),
                      "steps": pa.array(20 + index % VARIANTS),
                      "label": pa.array(np.char.add("class-", (index % 100).astype(str)))})
    plan, planned = plan_shards(normalize(table, RowDefaults(model="tiny:sd15")), shard_size)
    store = LocalStore(root)
    os.makedirs(root)
    pq.write_table(planned, os.path.join(root, "manifest.parquet"), row_group_size=ROW_GROUP_ROWS)
    store.put("job.json", json_bytes({"run_fingerprint": "bench", "manifest": {"rows": rows,
                                                                               "shards": len(plan.shards)}}))
    n = planned.num_rows
    given = {"id": planned["id"], "shard": planned["shard"], "seed": planned["seed"], "steps": planned["steps"],
             "width": planned["width"], "height": planned["height"], "model": planned["model"],
             "attempt": pa.array(["a1"] * n), "status": pa.array(["ok"] * n), "device": pa.array(["cuda"] * n),
             "image": pc_concat("images/", planned["id"], ".png"), "render_seconds": pa.array(np.full(n, 0.4))}
    results = pa.table({f.name: given[f.name].cast(f.type) if f.name in given else pa.nulls(n, f.type)
                        for f in RESULT_SCHEMA}, schema=RESULT_SCHEMA)
    markers = []
    for shard in plan.shards:
        key = metadata_key(shard.shard_id, "a1")
        os.makedirs(os.path.dirname(store.url_for(key)), exist_ok=True)
        pq.write_table(results.slice(shard.start, shard.size), store.url_for(key))
        marker = {"shard": shard.shard_id, "attempt": "a1", "metadata": key, "rows": shard.size, "ok": shard.size,
                  "failed": 0, "committed_at": "2026-01-01T00:00:00Z"}
        store.put(marker_key(shard.shard_id), json_bytes(marker))
        markers.append(marker)
    write_index(store, pa.Table.from_pylist(markers, schema=MARKER_SCHEMA))
    return len(plan.shards)


def pc_concat(prefix: str, column, suffix: str):
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(prefix, column.cast("string"), suffix, "")


COMPACT = """
import shutil, tempfile
from sdbatch.store.local import LocalStore
store, how = LocalStore(sys.argv[1]), sys.argv[2]
for key in store.list('results/') + ['_compacted.json']:
    store.delete(key)  # the other way's files: each way writes its own
t0 = time.perf_counter()
if how == 'plain':
    from sdbatch.output.results import compact
    doc, started = compact(store), t0
else:
    import ray
    from sdbatch.engine.compaction import compact_on_ray
    temp = tempfile.mkdtemp(prefix='sdb-bench-', dir='/tmp')
    ray.init(address='local', num_cpus=int(sys.argv[3]), include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    started = time.perf_counter()
    try:
        doc = compact_on_ray(store)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
end = time.perf_counter()
out = {'seconds': end - t0, 'compact_s': end - started, 'parts': len(doc['parts']), 'rows': doc['rows']}
"""


def bench_compaction(rows: int, tmp: str) -> list[str]:
    """compact on the driver against compact_on_ray on a private local Ray of as many CPUs as this machine; each
    twice, alternating, the second kept: the first pays for the build's files still being written back."""
    root = os.path.join(tmp, f"compact-{rows}")
    started = time.perf_counter()
    shards = build_output(root, rows)
    cpus = os.cpu_count() or 1
    lines = [f"compaction of a {rows:,}-row output ({shards:,} shards of 32 rows, local folder), built in "
             f"{time.perf_counter() - started:.0f} s; this machine's {cpus} CPUs bound the Ray speed-up at about "
             f"{cpus}x. Peak RSS: the driver process's own (VmHWM), not Ray's workers'"]
    for _ in range(2):
        plain = child(COMPACT, root, "plain")
        on_ray = child(COMPACT, root, "ray", str(cpus))
    assert plain["parts"] == on_ray["parts"] and plain["rows"] == on_ray["rows"] == rows
    lines.append(f"  compact (driver, one core): {plain['seconds']:.1f} s, {plain['parts']} parts, "
                 f"driver peak RSS {plain['peak_rss_mb']:.0f} MB")
    lines.append(f"  compact_on_ray ({cpus} CPUs): {on_ray['seconds']:.1f} s with Ray's start, "
                 f"{on_ray['compact_s']:.1f} s after it, driver peak RSS {on_ray['peak_rss_mb']:.0f} MB")
    lines.append(f"  speed-up: {plain['seconds'] / on_ray['seconds']:.2f}x with Ray's start, "
                 f"{plain['seconds'] / on_ray['compact_s']:.2f}x after it; driver memory "
                 f"{on_ray['peak_rss_mb'] / plain['peak_rss_mb']:.2f}x")
    return lines
