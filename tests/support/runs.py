"""A synthetic run committed through the output protocol, without Ray or torch: for readers of big outputs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sdbatch.manifest.normalize import normalize
from sdbatch.output.commits import commit_shard
from sdbatch.plan.planned import ROW_GROUP_ROWS
from sdbatch.plan.shards import plan_shards
from sdbatch.settings import RowDefaults
from sdbatch.store.local import LocalStore

INJECTED = '<b class="injected">bold</b> & "quoted"'


def synthetic_run(root: Path, rows: int, failed_every: int = 0, groups: int = 3, variants: int = 1,
                  shard_size: int = 5000, commit_every: int = 1, row_group_rows: int = ROW_GROUP_ROWS) -> LocalStore:
    """A run whose every `commit_every`-th shard is committed; `variants` interleaves rows of as many
    step counts, so each shard's rows are spread over the manifest. Its manifest copy has row groups of
    `row_group_rows`, as a run's has of ROW_GROUP_ROWS."""
    store = LocalStore(str(root))
    table = pa.table({"id": [f"r{n:06d}" for n in range(rows)],
                      "prompt": [f"prompt {n} {INJECTED}" for n in range(rows)],
                      "steps": [2 + n % variants for n in range(rows)],
                      "group": [f"g{n % groups}" for n in range(rows)]})
    manifest = normalize(table, RowDefaults(model="tiny:sd15", width=64, height=64, steps=2))
    plan, planned = plan_shards(manifest, shard_size)
    sink = io.BytesIO()
    pq.write_table(planned, sink, row_group_size=row_group_rows)
    store.put("manifest.parquet", sink.getvalue())
    store.put("job.json", json.dumps({"run_fingerprint": "synthetic",
                                      "manifest": {"rows": rows, "shards": len(plan.shards)}}).encode())
    for shard in plan.shards[::commit_every]:
        rows = planned.slice(shard.start, shard.size).select(["id", "steps"]).to_pylist()
        numbers = [int(row["id"][1:]) for row in rows]  # the row's position in the manifest as written
        failed = [failed_every and n % failed_every == 0 for n in numbers]
        commit_shard(store, shard.shard_id, "a1", [
            {"id": row["id"], "shard": shard.shard_id, "attempt": "a1",
             "image": f"images/{shard.shard_id}/{row['id']}.png", "status": "failed" if bad else "ok",
             "error": "boom <i>x</i>" if bad else None, "seed": n, "width": 64, "height": 64, "steps": row["steps"],
             "guidance_scale": 7.5, "model": "tiny:sd15", "render_seconds": 0.5, "device": "cpu"}
            for row, n, bad in zip(rows, numbers, failed)])
    return store
