"""Reading a run's results: read_results, compaction into a few files part by part, open_results as a dataset."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sdbatch.errors import UsageError
from sdbatch.output import results
from sdbatch.output.commits import RESULT_SCHEMA, read_markers
from sdbatch.output.results import (
    COMPACTED_KEY,
    compact,
    compact_part,
    compaction_parts,
    finished_run,
    open_results,
    read_results,
    scan_results,
    write_compacted,
)
from sdbatch.output.scores import score_table, write_scores
from tests.support.runs import synthetic_run


def test_compaction_gives_read_results_table_in_a_few_files(tmp_path, monkeypatch):
    # Small batches and parts: shards span several batches, so their metadata is held, then dropped.
    monkeypatch.setattr(results, "BATCH_ROWS", 64)
    monkeypatch.setattr(results, "PART_ROWS", 300)
    store = synthetic_run(tmp_path / "run", 1000, failed_every=7, variants=3, shard_size=40, row_group_rows=64)
    before = read_results(store)
    planned_order = sorted(range(1000), key=lambda n: (n % 3, n))  # by variant, manifest order inside each
    assert before.column("id").to_pylist() == [f"r{n:06d}" for n in planned_order]
    doc = compact(store)
    assert len(doc["parts"]) == 4 and store.exists(COMPACTED_KEY)
    assert read_results(store).equals(before)  # now read from the compacted files
    dataset = open_results(store)
    assert dataset.to_table().equals(before)
    failed = dataset.to_table(columns=["id", "error"], filter=pc.field("status") == "failed")
    assert failed.column("id").to_pylist() == [f"r{n:06d}" for n in planned_order if n % 7 == 0]
    assert set(failed.column("error").to_pylist()) == {"boom <i>x</i>"}


def test_an_unfinished_run_is_not_compacted_and_opens_as_its_metadata(tmp_path):
    store = synthetic_run(tmp_path / "run", 300, variants=2, shard_size=50, commit_every=2)
    with pytest.raises(UsageError, match=r"not finished \(3 of 6 shards committed\)"):
        compact(store)
    assert not store.exists(COMPACTED_KEY)
    dataset = open_results(store)
    assert dataset.schema.equals(RESULT_SCHEMA)
    table = dataset.to_table()
    assert table.num_rows == 150 and sorted(table.column("id").to_pylist()) == sorted(read_results(store)["id"].to_pylist())


def test_open_results_names_an_output_without_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no sdbatch run"):
        open_results(str(tmp_path / "nothing"))


def test_scan_streams_what_read_results_returns_finished_or_not(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "BATCH_ROWS", 50)
    store = synthetic_run(tmp_path / "run", 400, failed_every=9, variants=3, shard_size=30, commit_every=3)
    batches = list(scan_results(store, columns=["id", "status", "group"]))
    assert len(batches) > 3 and all(b.column_names == ["id", "status", "group"] for b in batches)
    table = read_results(store)
    committed = {m["shard"] for m in read_markers(store).to_pylist()}
    assert set(table.column("shard").to_pylist()) == committed  # rows of shards not committed are left out
    assert pa.concat_tables(batches).equals(table.select(["id", "status", "group"]))



def test_where_selects_the_rows_the_clause_means_compacted_or_not(tmp_path, monkeypatch):
    from sdbatch.output.where import WhereError

    monkeypatch.setattr(results, "BATCH_ROWS", 64)
    store = synthetic_run(tmp_path / "run", 600, failed_every=7, variants=3, shard_size=40)
    clause = "status = 'ok' and \"group\" in ('g0', 'g2') and seed >= 100"  # group is a SQL word: quoted
    everything = read_results(store)
    expected = [r["id"] for r in everything.to_pylist()
                if r["status"] == "ok" and r["group"] in ("g0", "g2") and r["seed"] >= 100]
    for compacted in (False, True):
        if compacted:
            compact(store)
            dataset = open_results(store, where=clause)
            assert dataset.to_table().column("id").to_pylist() == expected
        assert read_results(store, where=clause).column("id").to_pylist() == expected
        assert [i for t in scan_results(store, ["id"], where=clause) for i in t.column("id").to_pylist()] == expected
        with pytest.raises(WhereError, match="clip_scroe"):
            read_results(store, where="clip_scroe > 0.2")
    nothing = synthetic_run(tmp_path / "none", 20, shard_size=10, commit_every=3)
    nothing.delete("_committed/000000.json")  # no shard committed: no rows, and still a clause is checked
    assert read_results(nothing).num_rows == 0
    with pytest.raises(WhereError, match="nope"):
        read_results(nothing, where="nope = 1")


def test_compaction_parts_cover_every_row_group_once_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "PART_ROWS", 120)
    store = synthetic_run(tmp_path / "run", 1010, variants=2, shard_size=40, row_group_rows=50)
    parts = compaction_parts(store)
    assert parts == [(0, 3), (3, 6), (6, 9), (9, 12), (12, 15), (15, 18), (18, 21)]  # 21 groups, the last of 10 rows
    assert [g for start, stop in parts for g in range(start, stop)] == list(range(21))
    monkeypatch.setattr(results, "PART_ROWS", 10**9)
    assert compaction_parts(store) == [(0, 21)]
    monkeypatch.setattr(results, "PART_ROWS", 1)  # a part is never less than a row group
    assert compaction_parts(store) == [(g, g + 1) for g in range(21)]


def _scored_run(tmp_path, monkeypatch):
    """1000 rows in row groups of 64, parts of 3 groups: shards of 40 rows straddle part ends; two steps
    scored, each for some shards only."""
    monkeypatch.setattr(results, "BATCH_ROWS", 32)
    monkeypatch.setattr(results, "PART_ROWS", 150)
    store = synthetic_run(tmp_path / "run", 1000, failed_every=7, variants=3, shard_size=40, row_group_rows=64)
    shards = read_markers(store).column("shard").to_pylist()
    table = read_results(store).select(["shard", "id"])
    for n, shard in enumerate(shards):
        ids = table.filter(pc.field("shard") == shard).column("id").to_pylist()[::-1]  # joined by id, not order
        if n % 2 == 0:
            write_scores(store, "clip", shard, score_table("clip", ids, {"clip_score": [int(i[1:]) / 1000 for i in ids]}), {})
        if n % 3 == 0:
            write_scores(store, "phash", shard, score_table("phash", ids, {"phash": [i[-4:] for i in ids]}), {})
    return store


def test_compaction_in_parts_gives_read_results_table_with_scores(tmp_path, monkeypatch):
    store = _scored_run(tmp_path, monkeypatch)
    before = read_results(store)  # the one-pass join, as compaction made it before parts
    assert {"clip_score", "phash"} <= set(before.column_names)
    assert before.column("clip_score").null_count and before.column("clip_score").drop_null().to_pylist()
    doc = compact(store)
    assert doc["parts"] == [f"results/part-{n:05d}.parquet" for n in range(6)] and doc["rows"] == 1000
    shards_per_part = [set(pq.read_table(store.url_for(key), columns=["shard"]).column("shard").to_pylist())
                       for key in doc["parts"]]
    assert any(a & b for a, b in zip(shards_per_part, shards_per_part[1:]))  # a shard straddles two parts
    after = open_results(store).to_table()
    assert after.schema.equals(before.schema) and after.equals(before)
    assert read_results(store).equals(before)


def test_parts_compacted_out_of_order_give_the_same_table(tmp_path, monkeypatch):
    store = _scored_run(tmp_path, monkeypatch)
    before = read_results(store)
    job, _ = finished_run(store)
    parts = list(enumerate(compaction_parts(store)))
    keys = {index: compact_part(store, groups, index) for index, groups in reversed(parts)}
    write_compacted(store, job, [keys[index] for index, _ in parts])
    assert read_results(store).equals(before)


def test_a_part_with_no_committed_row_writes_nothing(tmp_path):
    # Shards of 50 rows, one per row group; every second shard committed.
    store = synthetic_run(tmp_path / "run", 300, shard_size=50, commit_every=2, row_group_rows=50)
    assert compact_part(store, (1, 2), 1) is None and not store.list("results/")
    assert compact_part(store, (0, 2), 0) == "results/part-00000.parquet"
    assert pq.read_table(store.url_for("results/part-00000.parquet")).num_rows == 50
