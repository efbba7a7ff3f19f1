"""Shard commits and the marker index: resume and status without a GET per marker, the markers staying the truth."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from sdbatch.errors import StoreError
from sdbatch.output import commits
from sdbatch.output.commits import (
    INDEX_PREFIX,
    MARKER_PREFIX,
    RESULT_SCHEMA,
    MarkerIndex,
    commit_shard,
    marker_key,
    parquet_bytes,
    read_markers,
    read_metadata,
)
from sdbatch.store.local import LocalStore


class CountingStore(LocalStore):
    """A local store that counts the GETs and listings made of it."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.gets: list[str] = []
        self.lists: list[str] = []

    def get(self, key: str) -> bytes:
        self.gets.append(key)
        return super().get(key)

    def list(self, prefix: str = "") -> list[str]:
        self.lists.append(prefix)
        return super().list(prefix)


@pytest.fixture
def store(tmp_path):
    return CountingStore(str(tmp_path))


def _commit(store, shard: str, failed: int = 0) -> dict:
    rows = [{"id": f"{shard}-{n}", "shard": shard, "attempt": "a1", "status": "failed" if n < failed else "ok"}
            for n in range(3)]
    return commit_shard(store, shard, "a1", rows)


def test_indexed_markers_are_read_without_a_get_each(store):
    index = MarkerIndex(store, interval=3600)
    for n in range(40):
        index.add(_commit(store, f"{n:06d}", failed=n % 2))
    index.write()
    late = [_commit(store, f"{n:06d}") for n in range(40, 43)]  # committed after the index's last write
    store.gets.clear()
    markers = read_markers(store)
    marker_gets = [key for key in store.gets if key.startswith(MARKER_PREFIX)]
    assert sorted(marker_gets) == [marker_key(m["shard"]) for m in late]
    assert markers.num_rows == 43 and sorted(markers.column("shard").to_pylist()) == [f"{n:06d}" for n in range(43)]
    by_shard = {m["shard"]: m for m in markers.to_pylist()}
    for n in (0, 1, 41):  # what the index says is what the marker says
        assert by_shard[f"{n:06d}"] == {k: v for k, v in json.loads(store.get(marker_key(f"{n:06d}"))).items()
                                        if k in commits.MARKER_SCHEMA.names}
    assert sum(m["failed"] for m in by_shard.values()) == 20


def test_a_complete_index_answers_without_listing_the_markers(store):
    index = MarkerIndex(store, interval=3600)
    for n in range(5):
        index.add(_commit(store, f"{n:06d}"))
    index.write()
    store.lists.clear()
    store.gets.clear()
    assert read_markers(store, shards_total=5).num_rows == 5
    assert MARKER_PREFIX not in store.lists and not any(k.startswith(MARKER_PREFIX) for k in store.gets)
    # Not complete: the markers are listed, since one may have committed after the index.
    store.lists.clear()
    assert read_markers(store, shards_total=6).num_rows == 5 and MARKER_PREFIX in store.lists


def test_refresh_indexes_what_it_had_to_read(store):
    for n in range(6):
        _commit(store, f"{n:06d}")  # e.g. a driver killed before its first index write
    assert read_markers(store, refresh=True).num_rows == 6
    store.gets.clear()
    assert read_markers(store, shards_total=6).num_rows == 6
    assert not any(k.startswith(MARKER_PREFIX) for k in store.gets)


def test_parts_are_merged_and_two_drivers_parts_count_each_shard_once(store, monkeypatch):
    monkeypatch.setattr(commits, "MAX_INDEX_PARTS", 3)
    first, second = MarkerIndex(store, interval=0), MarkerIndex(store, interval=3600)
    for n in range(8):
        marker = _commit(store, f"{n:06d}")
        first.add(marker)  # interval 0: a part per marker, merged whenever there are more than 3
        second.add(marker)
    second.write()
    assert len(store.list(INDEX_PREFIX)) <= 4
    markers = read_markers(store, shards_total=8)
    assert sorted(markers.column("shard").to_pylist()) == [f"{n:06d}" for n in range(8)]


def test_an_index_that_cannot_be_written_fails_nothing_and_is_written_later(store, monkeypatch):
    index = MarkerIndex(store, interval=3600)
    index.add(_commit(store, "000000"))
    put = store.put

    def refuse(key, data):
        if key.startswith(INDEX_PREFIX):
            raise StoreError("503 SlowDown")
        return put(key, data)

    monkeypatch.setattr(store, "put", refuse)
    index.write()
    assert store.list(INDEX_PREFIX) == []
    monkeypatch.setattr(store, "put", put)
    index.add(_commit(store, "000001"))
    index.write()
    store.gets.clear()
    assert read_markers(store, shards_total=2).num_rows == 2
    assert not any(k.startswith(MARKER_PREFIX) for k in store.gets)


def test_metadata_of_an_older_schema_reads_with_the_current_columns():
    current = pa.Table.from_pylist([{"id": "a", "status": "ok", "seed": 3}], schema=RESULT_SCHEMA)
    assert read_metadata(parquet_bytes(current)).equals(current)
    older = pa.table({"id": ["a"], "status": ["ok"], "seed": [3]})  # e.g. before vae_hash existed
    read = read_metadata(parquet_bytes(older))
    assert read.schema.equals(RESULT_SCHEMA) and read.to_pylist() == current.to_pylist()
