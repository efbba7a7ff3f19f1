"""A manifest file planned a chunk at a time: the same plan whatever the file's row groups, global row
numbers in errors, ids unique across chunks, and each shard's rows read back from the planned file."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdbatch.errors import ManifestError
from sdbatch.manifest.normalize import normalize
from sdbatch.output.job import ManifestDigest
from sdbatch.plan import planned as planning
from sdbatch.plan.planned import PlannedRows, plan_manifest
from sdbatch.plan.shards import plan_shards, shard_rows
from sdbatch.settings import RowDefaults

DEFAULTS = RowDefaults(model="m", width=64, height=64)
CHUNK = 50


def _table(rows: int, variants: int = 3, ids: bool = True) -> pa.Table:
    columns = {"prompt": [f"p{n}" for n in range(rows)], "steps": [10 + n % variants for n in range(rows)],
               "label": list(range(rows))}
    return pa.table({"id": [f"r{n}" for n in range(rows)], **columns} if ids else columns)


def _write(tmp_path, table: pa.Table, row_group_size: int, name: str = "m.parquet") -> str:
    path = str(tmp_path / name)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_the_plan_depends_on_the_rows_not_on_the_files_row_groups(tmp_path):
    table = _table(230)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = plan_manifest(_write(tmp_path, table, 7, "a.parquet"), DEFAULTS, 8, str(tmp_path / "a"), chunk_rows=CHUNK)
    b = plan_manifest(_write(tmp_path, table, 1000, "b.parquet"), DEFAULTS, 8, str(tmp_path / "b"),
                      chunk_rows=CHUNK)
    assert a.plan == b.plan and a.fingerprint == b.fingerprint
    assert pq.read_table(a.planned).equals(pq.read_table(b.planned))
    # The same as planning the normalized table in memory, chunk by chunk.
    normalized = normalize(table, DEFAULTS)
    plan, planned = plan_shards(normalized, 8, chunk_rows=CHUNK)
    assert plan == a.plan and planned.equals(pq.read_table(a.planned))
    digest = ManifestDigest()
    for start in range(0, normalized.num_rows, CHUNK):
        digest.add(normalized.slice(start, CHUNK))
    assert a.fingerprint == digest.hexdigest()


def test_shards_stay_inside_a_chunk_and_a_variant_and_cover_every_row_once(tmp_path):
    result = plan_manifest(_write(tmp_path, _table(230), 16), DEFAULTS, 8, str(tmp_path), chunk_rows=CHUNK)
    planned = pq.read_table(result.planned)
    seen = []
    for shard in result.plan.shards:
        rows = shard_rows(planned, shard)
        assert 1 <= len(rows) <= 8 and {r["steps"] for r in rows} == {shard.variant.steps}
        assert len({r["label"] // CHUNK for r in rows}) == 1  # one chunk of the manifest
        assert planned.slice(shard.start, shard.size).column("shard").to_pylist() == [shard.shard_id] * shard.size
        seen += [r["label"] for r in rows]
    assert sorted(seen) == list(range(230))
    ids = [s.shard_id for s in result.plan.shards]
    assert ids == [f"{n:06d}" for n in range(len(ids))]


def test_a_problem_in_a_later_chunk_names_its_row_in_the_whole_manifest(tmp_path):
    table = _table(180).set_column(2, "steps", pa.array([10] * 170 + [0] + [10] * 9))
    with pytest.raises(ManifestError, match=r"column 'steps', row id 'r170' \(row 170\)"):
        plan_manifest(_write(tmp_path, table, 64), DEFAULTS, 8, str(tmp_path), chunk_rows=CHUNK)


def test_default_ids_count_across_chunks(tmp_path):
    result = plan_manifest(_write(tmp_path, _table(120, ids=False), 64), DEFAULTS, 8, str(tmp_path),
                           chunk_rows=CHUNK)
    ids = sorted(pq.read_table(result.planned).column("id").to_pylist())
    assert ids == [f"{n:06d}" for n in range(120)]


def test_an_id_repeated_in_another_chunk_is_refused_with_both_rows(tmp_path):
    ids = [f"r{n}" for n in range(180)]
    ids[160] = "r7"
    table = _table(180).set_column(0, "id", pa.array(ids))
    with pytest.raises(ManifestError, match=r"row id 'r7' \(row 160\): duplicates row 7"):
        plan_manifest(_write(tmp_path, table, 64), DEFAULTS, 8, str(tmp_path), chunk_rows=CHUNK)


def test_planned_rows_read_back_each_shard_across_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(planning, "ROW_GROUP_ROWS", 5)  # shards of 8 rows straddle groups
    monkeypatch.setattr(planning, "CACHED_GROUPS", 2)
    result = plan_manifest(_write(tmp_path, _table(230), 64), DEFAULTS, 8, str(tmp_path), chunk_rows=CHUNK)
    planned = pq.read_table(result.planned)
    reader = PlannedRows(result.planned)
    assert reader.file.metadata.num_row_groups > 40
    for shard in reversed(result.plan.shards):  # out of order: the cache must not matter
        assert reader.rows(shard) == shard_rows(planned, shard)


def test_missing_or_empty_manifests_are_refused_clearly(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        plan_manifest(str(tmp_path / "nope.parquet"), DEFAULTS, 8, str(tmp_path))
    with pytest.raises(ManifestError, match="has no rows"):
        plan_manifest(_write(tmp_path, _table(0), 64), DEFAULTS, 8, str(tmp_path))
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match="is not a Parquet file"):
        plan_manifest(str(tmp_path / "text.parquet"), DEFAULTS, 8, str(tmp_path))


def test_integer_ids_repeated_in_another_chunk_are_refused_too(tmp_path):
    ids = list(range(180))
    ids[175] = 12
    table = _table(180).set_column(0, "id", pa.array(ids, pa.int64()))
    with pytest.raises(ManifestError, match=r"row id '12' \(row 175\): duplicates row 12"):
        plan_manifest(_write(tmp_path, table, 64), DEFAULTS, 8, str(tmp_path), chunk_rows=CHUNK)
