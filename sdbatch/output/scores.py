"""Score files: scores/{step}/{shard}.parquet, one per committed shard and step, created once and never rewritten."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdbatch.output.commits import get_many, parquet_bytes
from sdbatch.scores import STEP_INFO, STEP_NAMES
from sdbatch.store.base import PutResult, Store

SCORES_PREFIX = "scores/"
# Schema metadata key of a score file: the step, the attempt whose images it scored, and what the step used.
IDENTITY_KEY = b"sdbatch.score"


def score_key(step: str, shard_id: str) -> str:
    return f"{SCORES_PREFIX}{step}/{shard_id}.parquet"


def step_schema(step: str) -> pa.Schema:
    return pa.schema([("id", pa.string()), *STEP_INFO[step].columns])


def score_table(step: str, ids: list[str], values: dict[str, list]) -> pa.Table:
    """A shard's scores of one step: one row per scored image, by id."""
    schema = step_schema(step)
    return pa.table({"id": ids, **{name: values.get(name, []) for name in schema.names[1:]}}, schema=schema)


def write_scores(store: Store, step: str, shard_id: str, table: pa.Table, identity: dict) -> bool:
    """Create the shard's score file for `step` unless one stands (a racing attempt's, or an earlier run's):
    True when this call wrote it. The file's metadata records the attempt and what the step used."""
    doc = json.dumps({"step": step, **identity}, sort_keys=True).encode()
    table = table.replace_schema_metadata({IDENTITY_KEY: doc})
    return store.put_once(score_key(step, shard_id), parquet_bytes(table)) is PutResult.CREATED


def scored_shards(store: Store, steps: tuple[str, ...] = STEP_NAMES) -> dict[str, set[str]]:
    """Per step that has any score file, the shards it has scored (one listing per step)."""
    found: dict[str, set[str]] = {}
    for step in steps:
        prefix = f"{SCORES_PREFIX}{step}/"
        shards = {key[len(prefix):].removesuffix(".parquet") for key in store.list(prefix) if key.endswith(".parquet")}
        if shards:
            found[step] = shards
    return found


def unscored(store: Store, steps: tuple[str, ...], shards: list[str]) -> dict[str, tuple[str, ...]]:
    """Per committed shard, the steps it has no score file for."""
    have = scored_shards(store, steps)
    return {shard: todo for shard in shards if (todo := tuple(s for s in steps if shard not in have.get(s, ())))}


def score_identity(blob: bytes) -> dict:
    """What a score file records of the step that wrote it."""
    metadata = pq.ParquetFile(pa.BufferReader(blob)).schema_arrow.metadata or {}
    return json.loads(metadata.get(IDENTITY_KEY, b"{}"))


class ScoreJoin:
    """Adds the score columns of every step the output has to shards' result tables (nulls where a shard has no
    file for a step yet, or an image no score), so the tables of all shards share one schema."""

    def __init__(self, store: Store):
        self.store = store
        self.scored = scored_shards(store)

    @property
    def steps(self) -> tuple[str, ...]:
        return tuple(self.scored)

    def add(self, shards: list[str], results: list[pa.Table]) -> list[pa.Table]:
        """`results[i]` is shard `shards[i]`'s metadata table; returned with the score columns appended."""
        if not self.scored:
            return results
        wanted = [(step, shard) for step in self.scored for shard in shards if shard in self.scored[step]]
        blobs = dict(zip(wanted, get_many(self.store, [score_key(step, shard) for step, shard in wanted])))
        return [self._joined(shard, table, blobs) for shard, table in zip(shards, results)]

    def _joined(self, shard: str, table: pa.Table, blobs: dict[tuple[str, str], bytes]) -> pa.Table:
        for step in self.scored:
            blob = blobs.get((step, shard))
            scores = (pq.read_table(pa.BufferReader(blob), schema=step_schema(step)) if blob is not None
                      else step_schema(step).empty_table())
            positions = pc.index_in(table.column("id"), value_set=scores.column("id"))
            for name, kind in STEP_INFO[step].columns:
                table = table.append_column(pa.field(name, kind), scores.column(name).take(positions))
        return table
