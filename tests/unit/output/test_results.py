"""Reading a run's results: read_results, compaction into a few files in one pass, open_results as a dataset."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sdbatch.errors import UsageError
from sdbatch.output import results
from sdbatch.output.commits import RESULT_SCHEMA, read_markers
from sdbatch.output.results import COMPACTED_KEY, compact, open_results, read_results, scan_results
from tests.support.runs import synthetic_run


def test_compaction_gives_read_results_table_in_a_few_files(tmp_path, monkeypatch):
    # Small batches and parts: shards span several batches, so their metadata is held, then dropped.
    monkeypatch.setattr(results, "BATCH_ROWS", 64)
    monkeypatch.setattr(results, "PART_ROWS", 300)
    store = synthetic_run(tmp_path / "run", 1000, failed_every=7, variants=3, shard_size=40)
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
