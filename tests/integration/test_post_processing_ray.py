"""Post-processing as Ray tasks on a private local Ray: compaction (the same parts and table as compact, no
_compacted.json when a part cannot be made) and export (the same files and card as the one-process export, no card
when a task cannot finish)."""

from __future__ import annotations

import shutil
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdbatch.errors import RunStopped
from sdbatch.output import results
from sdbatch.output.commits import read_markers
from sdbatch.output.results import COMPACTED_KEY, compact, read_results
from sdbatch.output.scores import score_table, write_scores
from tests.support.runs import synthetic_run

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    temp = tempfile.mkdtemp(prefix="sdb-compact-", dir="/tmp")  # Ray's socket paths must stay short
    ray.init(address="local", include_dashboard=False, num_cpus=2, log_to_driver=False, _temp_dir=temp)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def _run(root, rows=600):
    """Shards of 40 rows in row groups of 64: parts (set by PART_ROWS here, on the driver) cut shards."""
    store = synthetic_run(root, rows, failed_every=7, variants=3, shard_size=40, row_group_rows=64)
    for shard in read_markers(store).column("shard").to_pylist()[::2]:
        ids = [row["id"] for row in read_results(store).filter(pa.compute.field("shard") == shard).to_pylist()]
        write_scores(store, "clip", shard, score_table("clip", ids, {"clip_score": [0.5] * len(ids)}), {})
    return store


def test_compaction_on_ray_writes_what_compact_writes(tmp_path, monkeypatch, local_ray):
    from sdbatch.engine.compaction import compact_on_ray

    monkeypatch.setattr(results, "PART_ROWS", 120)  # compaction_parts runs on the driver: 5 parts
    store = _run(tmp_path / "run")
    expected = compact(store)
    table = read_results(store)
    parts = {key: pq.read_table(store.url_for(key)) for key in expected["parts"]}
    for key in [*expected["parts"], COMPACTED_KEY]:
        store.delete(key)
    for tasks in (None, 1):  # the default (a few per CPU), then one part at a time
        assert compact_on_ray(store, tasks=tasks) == expected and len(expected["parts"]) == 5
        assert all(pq.read_table(store.url_for(key)).equals(part) for key, part in parts.items())
        assert read_results(store).equals(table)


def test_a_part_that_fails_twice_stops_compaction_without_compacted_json(tmp_path, monkeypatch, local_ray):
    from sdbatch.engine.compaction import compact_on_ray

    monkeypatch.setattr(results, "PART_ROWS", 120)
    store = _run(tmp_path / "run")
    marker = read_markers(store).to_pylist()[-1]  # a shard of the last variant: in the last part
    store.put(marker["metadata"], b"not parquet")
    with pytest.raises(RunStopped, match=r"failed twice on part 4 \(manifest row groups 8 to 9\): .*No _compacted"):
        compact_on_ray(store)
    assert not store.exists(COMPACTED_KEY)


def test_a_big_run_is_published_on_ray_with_the_metadata_the_one_pass_writes(tmp_path, monkeypatch, local_ray):
    from sdbatch.engine import compaction
    from sdbatch.run import publish

    monkeypatch.setattr(results, "PART_ROWS", 120)
    small, big = _run(tmp_path / "small"), _run(tmp_path / "big")
    real, on_ray = compaction.compact_on_ray, []

    def spy(store, tasks=None):
        on_ray.append(store.uri)
        return real(store, tasks)

    monkeypatch.setattr(compaction, "compact_on_ray", spy)
    monkeypatch.setattr(publish, "RAY_COMPACTION_ROWS", 601)
    assert publish.publish(small)["parts"] and not on_ray
    monkeypatch.setattr(publish, "RAY_COMPACTION_ROWS", 600)
    assert len(publish.publish(big)["parts"]) == 5 and on_ray == [big.uri]
    for key in ("metadata.parquet", "results/part-00004.parquet"):
        assert pq.read_table(big.url_for(key)).equals(pq.read_table(small.url_for(key))), key
    assert pq.read_table(big.url_for("metadata.parquet")).num_rows == 600 - 600 // 7 - 1  # every 7th failed


def test_an_export_on_ray_writes_what_the_one_process_export_writes(tmp_path, monkeypatch, local_ray):
    from sdbatch.engine.export import export_on_cluster
    from sdbatch.output.export import ExportSettings, export
    from sdbatch.output.export import windows as windows_module
    from sdbatch.store.local import LocalStore
    from tests.support.image_runs import image_run

    store = image_run(tmp_path / "run", "webdataset", shards=6, per_shard=5)
    compact(store)
    monkeypatch.setattr(windows_module, "WINDOW_ROWS", 6)  # on the driver: windows of 3 files
    where = pa.compute.field("label") != "cat0"
    settings = ExportSettings(rows_per_group=2)
    for format in ("parquet", "imagefolder"):
        one = export(store, LocalStore(str(tmp_path / f"one-{format}")), format, where, 2, settings)
        cut = export_on_cluster(store, LocalStore(str(tmp_path / f"ray-{format}")), format, where, 2, settings)
        assert cut.rows == one.rows > 0 and (cut.files, cut.bytes) == (one.files, one.bytes)
        for key in (*one.files, one.card):
            one_path, cut_path = tmp_path / f"one-{format}" / key, tmp_path / f"ray-{format}" / key
            if key.endswith(".parquet"):
                assert pq.read_table(cut_path).equals(pq.read_table(one_path)), key
            else:
                assert cut_path.read_bytes() == one_path.read_bytes(), key
        assert sorted(p.name for p in (tmp_path / f"ray-{format}").rglob("*")) == sorted(
            p.name for p in (tmp_path / f"one-{format}").rglob("*"))


def test_an_export_task_that_fails_twice_stops_the_export_without_a_card(tmp_path, local_ray):
    from sdbatch.engine.export import export_on_cluster
    from sdbatch.store.local import LocalStore
    from tests.support.image_runs import image_run

    store = image_run(tmp_path / "run", "files")
    [part] = compact(store)["parts"]
    store.put(part, b"not parquet")
    with pytest.raises(RunStopped, match=rf"counting {part} failed twice: .*no card \(README.md\)"):
        export_on_cluster(store, LocalStore(str(tmp_path / "dest")), "parquet")
    assert not (tmp_path / "dest" / "README.md").exists()
