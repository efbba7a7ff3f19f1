"""An export in windows (output/export/windows.py), run in a plain loop: the same files, rows and card as the
one-process export, whatever the windows' cuts through parts and files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sdbatch.output import results
from sdbatch.output.export import ExportSettings, export
from sdbatch.output.export import windows as windows_module
from sdbatch.output.export.card import CARD_KEY, Distribution, Stats
from sdbatch.output.export.windows import PartCount, export_in_windows, plan_windows, window_rows
from sdbatch.output.results import compact
from sdbatch.store.local import LocalStore
from tests.support.image_runs import image_run


def _compacted(root: Path, layout: str, monkeypatch) -> LocalStore:
    """6 shards of 5 rows (2 failed), compacted into parts of 4 rows: windows cut parts, shards and files."""
    store = image_run(root, layout, shards=6, per_shard=5, failing=frozenset({"s1r3", "s4r0"}))
    path = store.url_for("manifest.parquet")
    pq.write_table(pq.read_table(path), path, row_group_size=4)
    monkeypatch.setattr(results, "PART_ROWS", 4)
    assert len(compact(store)["parts"]) == 8
    return store


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.mark.parametrize(("format", "layout"), [("parquet", "files"), ("webdataset", "webdataset"),
                                                ("imagefolder", "files"), ("imagefolder", "webdataset")])
def test_windows_write_what_one_pass_writes(tmp_path, monkeypatch, format, layout):
    store = _compacted(tmp_path / "run", layout, monkeypatch)
    monkeypatch.setattr(windows_module, "WINDOW_ROWS", 6)  # windows of 6 rows: 3 files of 2, over 2 or 3 parts
    settings = ExportSettings(rows_per_group=2)
    where = pc.field("label") != "cat0"
    one = export(store, LocalStore(str(tmp_path / "one")), format, where, rows_per_file=2, settings=settings)
    calls = []

    def loop(function, calls_, doing, names):
        calls.append((function.__name__, len(calls_)))
        return [function(*call) for call in calls_]

    cut = export_in_windows(store, LocalStore(str(tmp_path / "cut")), format, where, 2, settings, loop)
    assert calls[0] == ("count_part", 8) and calls[1][0] == "write_window" and calls[1][1] >= 2
    assert cut == type(one)(**{**one.__dict__, "dest": cut.dest})
    one_files, cut_files = _files(tmp_path / "one"), _files(tmp_path / "cut")
    assert sorted(one_files) == sorted(cut_files)  # no piece left behind
    for key, data in one_files.items():
        if key.endswith(".parquet"):
            assert pq.read_table(tmp_path / "cut" / key).equals(pq.read_table(tmp_path / "one" / key)), key
        else:
            assert cut_files[key] == data, key
    assert one.rows > 0 and one.rows_filtered > 0 and one.rows_failed == 2


def test_a_run_not_compacted_is_refused(tmp_path):
    store = image_run(tmp_path / "run", "files")
    with pytest.raises(Exception, match="not compacted; run `sdbatch compact`"):
        export_in_windows(store, LocalStore(str(tmp_path / "dest")), "parquet")
    assert not (tmp_path / "dest" / CARD_KEY).exists()


def test_windows_cover_the_kept_rows_once_with_the_parts_they_read():
    counts = [PartCount(f"p{n}", kept, kept, 0, 0) for n, kept in enumerate([5, 0, 3, 9, 1])]
    windows = plan_windows(counts, 4)
    assert [(w.start, w.stop) for w in windows] == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 18)]
    assert [w.index for w in windows] == list(range(5))
    assert [[key for key, _ in w.parts] for w in windows] == [["p0"], ["p0", "p2"], ["p3"], ["p3"], ["p3", "p4"]]
    assert windows[1].parts == (("p0", 0), ("p2", 5)) and windows[4].parts == (("p3", 8), ("p4", 17))
    assert plan_windows([PartCount("p", 0, 3, 3, 0)], 4) == []


def test_window_rows_are_whole_files_and_row_groups():
    settings = ExportSettings(rows_per_group=100)
    assert window_rows(300, settings) % 300 == 0 and window_rows(300, settings) <= windows_module.WINDOW_ROWS
    assert window_rows(250, settings) % 500 == 0  # a window starts where a file and a row group both do
    assert window_rows(10**7, settings) == 10**7  # at least one file
    # Few rows kept: as many windows as calls run at once, in whole files still.
    assert window_rows(100, settings, total=10_000, spread=8) == 1300
    assert window_rows(3000, settings, total=10_000, spread=8) == 3000
    assert window_rows(100, settings, total=10**9, spread=8) == window_rows(100, settings)


def test_stats_merged_are_the_stats_of_all_rows():
    tables = [pa.table({"model": ["a", "b", None][: n % 3 + 1], "steps": [n] * (n % 3 + 1),
                        "aesthetic": [float(n), None, 2.0 * n][: n % 3 + 1]}) for n in range(20)]
    whole, merged = Stats(), Stats()
    for table in tables:
        whole.add(table)
    for half in (tables[:7], tables[7:]):
        part = Stats()
        for table in half:
            part.add(table)
        merged.merge(part)
    assert merged.rows == whole.rows and merged.settings == whole.settings
    assert merged.scores["aesthetic"].summary() == whole.scores["aesthetic"].summary()


def test_distributions_merged_past_their_bound_keep_an_even_sample(monkeypatch):
    from sdbatch.output.export import card

    monkeypatch.setattr(card, "SAMPLE", 50)
    first, second = Distribution(), Distribution()
    first.add(pa.chunked_array([pa.array([float(v) for v in range(0, 300)])]))
    second.add(pa.chunked_array([pa.array([float(v) for v in range(300, 1000)])]))
    first.merge(second)
    summary = first.summary()
    assert (summary["min"], summary["max"], first.count) == (0, 999, 1000)
    assert sum(len(part) for part in first.kept) <= 100 and summary["50%"] == pytest.approx(500, abs=40)
    assert json.dumps(summary)


def test_a_filter_naming_no_column_of_the_results_is_a_usage_error(tmp_path, monkeypatch):
    from sdbatch.errors import UsageError
    from sdbatch.output.export.windows import count_part

    store = _compacted(tmp_path / "run", "files", monkeypatch)
    with pytest.raises(UsageError, match=r"cannot be applied .*name columns the results have: .*label"):
        count_part(store, "results/part-00000.parquet", pc.field("nope") == 1)
    for key in json.loads(store.get("_compacted.json"))["parts"]:
        part = pq.read_table(store.url_for(key)).to_pylist()
        ok = [row for row in part if row["status"] == "ok"]
        kept = [row for row in ok if row["label"] == "cat1"]
        counted = count_part(store, key, pc.field("label") == "cat1")
        assert (counted.seen, counted.failed, counted.filtered, counted.kept) == (
            len(part), len(part) - len(ok), len(ok) - len(kept), len(kept)), key


def test_files_are_sized_from_the_first_kept_images_as_one_pass_sizes_them(tmp_path, monkeypatch):
    """The run's first rows are filtered out and their images are gone: sizing from them (the fallback size)
    would cut one row per file, where the kept images make three."""
    store = _compacted(tmp_path / "run", "files", monkeypatch)
    for row in pq.read_table(store.url_for("results/part-00000.parquet")).to_pylist():
        if row["label"] == "cat0" and row["image"]:
            store.delete(row["image"])
    where, settings = pc.field("label") != "cat0", ExportSettings(rows_per_group=1, max_file_bytes=2000)
    one = export(store, LocalStore(str(tmp_path / "one")), "parquet", where, settings=settings)
    cut = export_in_windows(store, LocalStore(str(tmp_path / "cut")), "parquet", where, settings=settings)
    assert cut.files == one.files and len(one.files) < one.rows
