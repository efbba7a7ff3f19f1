"""StoreFile: a store's object as a seekable file, read by range."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdbatch.errors import ObjectNotFound
from sdbatch.store import ranged
from sdbatch.store.local import LocalStore
from sdbatch.store.ranged import StoreFile


class RangeCounting(LocalStore):
    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.ranges: list[tuple[int, int]] = []

    def read_range(self, key: str, start: int, stop: int) -> bytes:
        self.ranges.append((start, stop))
        return super().read_range(key, start, stop)


def test_reads_seeks_and_tells_like_a_file(tmp_path):
    store = LocalStore(str(tmp_path))
    store.put("blob", bytes(range(256)))
    file = StoreFile(store, "blob")
    assert (file.read(3), file.tell()) == (bytes([0, 1, 2]), 3)
    assert file.seek(-2, io.SEEK_END) == 254 and file.read() == bytes([254, 255])
    assert file.read(10) == b""  # at the end
    file.seek(10)
    file.seek(5, io.SEEK_CUR)
    buffer = bytearray(4)
    assert file.readinto(buffer) == 4 and bytes(buffer) == bytes([15, 16, 17, 18])
    with pytest.raises(ValueError, match="negative"):
        file.seek(-1)


def test_a_missing_object_is_object_not_found(tmp_path):
    with pytest.raises(ObjectNotFound):
        StoreFile(LocalStore(str(tmp_path)), "absent.parquet")


def test_parquet_reads_a_footer_and_its_row_groups_not_the_whole_object(tmp_path, monkeypatch):
    monkeypatch.setattr(ranged, "MIN_READ", 4096)
    table = pa.table({"n": list(range(40_000)), "text": [f"row {n} " * 4 for n in range(40_000)]})
    pq.write_table(table, tmp_path / "m.parquet", row_group_size=4000)
    store = RangeCounting(str(tmp_path))
    file = pq.ParquetFile(StoreFile(store, "m.parquet"))
    assert file.read_row_group(6) == table.slice(24_000, 4000)
    read = sum(stop - start for start, stop in store.ranges)
    size = (tmp_path / "m.parquet").stat().st_size
    columns = file.metadata.row_group(6)
    group = sum(columns.column(n).total_compressed_size for n in range(columns.num_columns))
    # Parquet's reader fetches a footer's last 64 KiB at once; then the group's column chunks.
    assert read <= group + (64 << 10) + 2 * 4096 < size / 3, (read, group, size)


def test_small_reads_come_from_one_fetch(tmp_path):
    store = RangeCounting(str(tmp_path))
    store.put("blob", bytes(1000))
    file = StoreFile(store, "blob")
    for start in (0, 100, 500, 990):
        file.seek(start)
        file.read(8)
    assert store.ranges == [(0, 1000)]  # the first read fetched up to MIN_READ, the whole object here
