"""Score files: created once per shard and step, found per step, joined into read_results by id with nulls elsewhere."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdbatch.output import results
from sdbatch.output.commits import read_markers
from sdbatch.output.results import compact, open_results, read_results
from sdbatch.output.scores import (
    score_identity,
    score_key,
    score_table,
    scored_shards,
    unscored,
    write_scores,
)
from sdbatch.scores import STEP_INFO, score_columns
from tests.support.runs import synthetic_run


def _shards(store) -> dict[str, list[str]]:
    """Each committed shard's ok ids."""
    table = read_results(store)
    by_shard: dict[str, list[str]] = {}
    for row in table.select(["shard", "id", "status"]).to_pylist():
        if row["status"] == "ok":
            by_shard.setdefault(row["shard"], []).append(row["id"])
    return by_shard


def _clip(ids: list[str]) -> pa.Table:
    return score_table("clip", ids, {"clip_score": [int(i[1:]) / 1000 for i in ids]})


def test_a_score_file_is_written_once_and_records_what_scored_it(tmp_path):
    store = synthetic_run(tmp_path / "run", 20, shard_size=10)
    ids = [f"r{n:06d}" for n in range(10)]
    assert write_scores(store, "clip", "000000", _clip(ids), {"attempt": "a1", "model": "tiny:clip"})
    first = store.get(score_key("clip", "000000"))
    assert not write_scores(store, "clip", "000000", _clip(ids[:3]), {"attempt": "a2", "model": "other"})
    assert store.get(score_key("clip", "000000")) == first  # another writer's file never replaces it
    assert score_identity(first) == {"step": "clip", "attempt": "a1", "model": "tiny:clip"}
    assert pq.read_table(pa.BufferReader(first)).num_rows == 10


def test_a_shard_whose_rows_all_failed_gets_empty_score_files():
    """Written all the same, so the shard counts as scored; before, its scores' missing columns raised."""
    for step in STEP_INFO:
        assert score_table(step, [], {}).num_rows == 0


def test_unscored_names_each_shard_with_the_steps_it_lacks(tmp_path):
    store = synthetic_run(tmp_path / "run", 30, shard_size=10)
    shards = read_markers(store).column("shard").to_pylist()
    write_scores(store, "clip", shards[0], _clip([]), {})
    write_scores(store, "phash", shards[1], score_table("phash", [], {"phash": []}), {})
    assert scored_shards(store) == {"clip": {shards[0]}, "phash": {shards[1]}}
    assert unscored(store, ("clip", "phash"), shards) == {shards[0]: ("phash",), shards[1]: ("clip",),
                                                          shards[2]: ("clip", "phash")}


def test_read_results_joins_scores_by_id_with_nulls_where_there_are_none(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "BATCH_ROWS", 7)  # shards span batches: their scores are held, then dropped
    store = synthetic_run(tmp_path / "run", 60, failed_every=5, variants=2, shard_size=10)
    plain = read_results(store)
    by_shard = _shards(store)
    scored = sorted(by_shard)[:-1]  # the last shard has no score file yet
    for shard in scored:
        ids = list(reversed(by_shard[shard]))  # a file's order is its own: the join goes by id
        write_scores(store, "clip", shard, _clip(ids), {})
    table = read_results(store)
    assert table.column_names == plain.column_names + ["clip_score"]
    assert table.drop_columns(["clip_score"]).equals(plain)
    for row in table.to_pylist():
        has = row["status"] == "ok" and row["shard"] in scored
        expected = pytest.approx(int(row["id"][1:]) / 1000, rel=1e-6) if has else None  # stored as float32
        assert row["clip_score"] == expected, row
    assert table.schema.field("clip_score").type == STEP_INFO["clip"].columns[0][1]
    compact(store)
    assert open_results(store).to_table().equals(table)  # the compacted files carry the scores


def test_score_columns_follow_the_steps_and_read_results_has_none_without_files(tmp_path):
    assert [name for name, _ in score_columns()] == ["clip_score", "aesthetic", "punsafe", "phash"]
    store = synthetic_run(tmp_path / "run", 10, shard_size=10)
    assert not set(read_results(store).column_names) & {name for name, _ in score_columns()}
