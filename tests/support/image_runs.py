"""A run with real images in either layout, labels and score files, committed without Ray or torch: for readers
that copy images out (export)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sdbatch.output.scores import score_table, write_scores
from sdbatch.store.local import LocalStore
from tests.support.shard_outputs import attempt, rows

# Columns that the test rows leave null, typed as a normalized manifest types them.
STRING_COLUMNS = ("scheduler",)


def shard_rows(shard: int, per_shard: int) -> tuple[dict, ...]:
    """Ids unique over the run, a seed (the image's red) per row, labels: a string, a list of strings, a float."""
    return tuple({**row, "id": f"s{shard}r{n}", "seed": 10 + shard * per_shard + n, "label": f"cat{n % 2}",
                  "tags": [f"shard{shard}", "tiny"], "quality": 0.25 * n}
                 for n, row in enumerate(rows(per_shard)))


def image_run(root: Path, layout: str, shards: int = 3, per_shard: int = 4,
              failing: frozenset[str] = frozenset({"s1r3"}), unscored: frozenset[int] = frozenset()) -> LocalStore:
    """`shards` shards committed in `layout` (the `failing` ids failed), manifest.parquet and job.json as a run
    writes them, aesthetic scores (id's row number + shard / 10) for the ok images of every shard but those `unscored`."""
    store = LocalStore(str(root))
    manifest = []
    for number in range(shards):
        shard = f"{number:06d}"
        task_rows = shard_rows(number, per_shard)
        outcome = attempt(store, layout, shard, "a1", task_rows, failing=failing)
        manifest += [{**row, "shard": shard} for row in task_rows]
        if number not in unscored:
            ok = [r["id"] for r in outcome.results if r["status"] == "ok"]
            values = [int(row_id.split("r")[-1]) + number / 10 for row_id in ok]
            write_scores(store, "aesthetic", shard, score_table("aesthetic", ok, {"aesthetic": values}),
                         {"attempt": "a1"})
    table = pa.Table.from_pylist(manifest)
    for name in STRING_COLUMNS:
        table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(pa.string()))
    sink = io.BytesIO()
    pq.write_table(table, sink)
    store.put("manifest.parquet", sink.getvalue())
    store.put("job.json", json.dumps({"run_fingerprint": "image-run", "spec": {"output": {"layout": layout}},
                                      "manifest": {"rows": len(manifest), "shards": shards}}).encode())
    return store
