"""Post-processing at scale (scale.py --post-rows N): a finished output built directly, compacted and then exported
(parquet, filtered to 1% of the rows) in one driver process and as Ray tasks, each in a fresh process."""

from __future__ import annotations

import os
import sys
import time

from scale import ROOT, VARIANTS, child

# One image in this many rows exists (label class-7): what the export's filter keeps.
KEPT_EVERY = 100
KEPT_LABEL = "class-7"


def build_output(root: str, rows: int, shard_size: int = 32) -> int:
    """A finished output of `rows` rows in shards of `shard_size`, as a run leaves it (manifest copy in row groups
    of ROW_GROUP_ROWS, a metadata file and a marker per shard, the marker index), written directly: commit_shard
    per shard would take longer than what is measured. Only the rows labelled KEPT_LABEL have their image (a
    small PNG), the rows the export keeps. Returns the shards."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
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
    png = _png()
    os.makedirs(os.path.join(root, "images"))
    for row_id in planned.filter(pc.equal(planned["label"], KEPT_LABEL))["id"].to_pylist():
        with open(os.path.join(root, "images", f"{row_id}.png"), "wb") as file:
            file.write(png)
    return len(plan.shards)


def _png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    sink = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(sink, "PNG")
    return sink.getvalue()


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


EXPORT = """
import shutil, tempfile
import pyarrow.compute as pc
from sdbatch.store.local import LocalStore
store, dest, how = LocalStore(sys.argv[1]), sys.argv[2], sys.argv[3]
shutil.rmtree(dest, ignore_errors=True)
where = pc.field('label') == 'class-7'
t0 = time.perf_counter()
if how == 'plain':
    from sdbatch.output.export import export
    summary, started = export(store, LocalStore(dest), 'parquet', where, rows_per_file=10_000), t0
else:
    import ray
    from sdbatch.engine.export import export_on_cluster
    temp = tempfile.mkdtemp(prefix='sdb-bench-', dir='/tmp')
    ray.init(address='local', num_cpus=int(sys.argv[4]), include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    started = time.perf_counter()
    try:
        summary = export_on_cluster(store, LocalStore(dest), 'parquet', where, rows_per_file=10_000)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
end = time.perf_counter()
out = {'seconds': end - t0, 'work_s': end - started, 'rows': summary.rows, 'files': len(summary.files),
       'rows_seen': summary.rows_seen, 'bytes': summary.bytes}
"""


def bench_post_processing(rows: int, tmp: str, shard_size: int) -> list[str]:
    """compact, then export, each in one driver process against as Ray tasks on a private local Ray of as many
    CPUs as this machine, alternating; the output built once."""
    root = os.path.join(tmp, f"post-{rows}")
    started = time.perf_counter()
    shards = build_output(root, rows, shard_size)
    cpus = os.cpu_count() or 1
    lines = [f"post-processing of a {rows:,}-row output ({shards:,} shards of {shard_size} rows, local folder, "
             f"{rows // KEPT_EVERY:,} images of the rows the export keeps), built in "
             f"{time.perf_counter() - started:.0f} s; this machine's {cpus} CPUs bound the Ray speed-up at about "
             f"{cpus}x. Peak RSS: the driver process's own (VmHWM), not Ray's workers'"]
    plain = child(COMPACT, root, "plain")
    on_ray = child(COMPACT, root, "ray", str(cpus))
    assert plain["parts"] == on_ray["parts"] and plain["rows"] == on_ray["rows"] == rows
    lines += _compared(f"compact ({plain['parts']} parts)", plain, on_ray, cpus)
    dest = os.path.join(tmp, f"export-{rows}")
    plain = child(EXPORT, root, dest, "plain")
    on_ray = child(EXPORT, root, dest, "ray", str(cpus))
    assert (plain["rows"], plain["files"]) == (on_ray["rows"], on_ray["files"]) == (rows // KEPT_EVERY, plain["files"])
    lines += _compared(f"export parquet --where \"label = '{KEPT_LABEL}'\" ({plain['rows']:,} of "
                       f"{plain['rows_seen']:,} rows, {plain['files']} files of 10,000 rows, "
                       f"{plain['bytes'] / 1e6:.0f} MB)", plain, on_ray, cpus)
    return lines


def _compared(what: str, plain: dict, on_ray: dict, cpus: int) -> list[str]:
    ray_work = on_ray.get("compact_s", on_ray.get("work_s"))
    return [f"  {what}:",
            f"    one driver process: {plain['seconds']:.1f} s, driver peak RSS {plain['peak_rss_mb']:.0f} MB",
            f"    Ray tasks ({cpus} CPUs): {on_ray['seconds']:.1f} s with Ray's start, {ray_work:.1f} s after it, "
            f"driver peak RSS {on_ray['peak_rss_mb']:.0f} MB",
            f"    speed-up: {plain['seconds'] / on_ray['seconds']:.2f}x with Ray's start, "
            f"{plain['seconds'] / ray_work:.2f}x after it; driver memory "
            f"{on_ray['peak_rss_mb'] / plain['peak_rss_mb']:.2f}x"]
