"""A finished run made readable: compacted, and where its images are loose files the imagefolder metadata written in
the same pass; a run without an ok image, or whose images are in tars, gets none and still compacts."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdbatch.output.results import COMPACTED_KEY, read_results
from sdbatch.run.publish import publish
from tests.support.image_runs import image_run, shard_rows


def test_a_files_run_gets_its_metadata_from_the_compaction_pass(tmp_path):
    store = image_run(tmp_path / "run", "files", failing=frozenset({"s1r3"}))
    publish(store)
    assert store.exists(COMPACTED_KEY)
    metadata = pq.read_table(pa.BufferReader(store.get("metadata.parquet")))
    ok = read_results(store).filter(pa.compute.equal(read_results(store).column("status"), "ok"))
    assert metadata.column("file_name").to_pylist() == ok.column("image").to_pylist()  # every ok image, in order
    assert metadata.column("aesthetic").to_pylist() == ok.column("aesthetic").to_pylist()
    assert "status" not in metadata.column_names and "s1r3" not in metadata.column("id").to_pylist()


@pytest.mark.parametrize("layout", ["files", "webdataset"])
def test_no_metadata_without_loose_ok_images_and_the_run_still_compacts(tmp_path, layout):
    every = frozenset(row["id"] for shard in range(2) for row in shard_rows(shard, 4))
    store = image_run(tmp_path / "run", layout, shards=2, failing=every if layout == "files" else frozenset())
    publish(store)  # before: a run whose every row failed stopped at its end with "no ok image yet"
    assert store.exists(COMPACTED_KEY) and not store.exists("metadata.parquet")
