"""StoreFile: an object of any store as a read-only, seekable file, read by range (Parquet footers, row groups)."""

from __future__ import annotations

import io

from sdbatch.store.base import Store

# Reads smaller than this fetch this much: Parquet's reader asks for a footer's few bytes, then the metadata
# just before them, and each small request to an object store costs a round trip.
MIN_READ = 1 << 20


class StoreFile(io.RawIOBase):
    """`store`'s `key` as a file: each read a ranged read of the store (with its retries), the last one kept,
    so pyarrow.parquet.ParquetFile reads a footer and chosen row groups without downloading the object."""

    def __init__(self, store: Store, key: str) -> None:
        super().__init__()
        self.store, self.key = store, key
        self.length = store.size(key)
        self.position = 0
        self.cached: tuple[int, bytes] = (0, b"")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self.position = base + offset
        return self.position

    def size(self) -> int:
        return self.length

    def read(self, size: int = -1) -> bytes:
        stop = self.length if size is None or size < 0 else min(self.length, self.position + size)
        data = self._range(self.position, stop)
        self.position += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def _range(self, start: int, stop: int) -> bytes:
        if start >= stop:
            return b""
        first, data = self.cached
        if first <= start and stop <= first + len(data):
            return data[start - first:stop - first]
        if stop - start >= MIN_READ:
            return self.store.read_range(self.key, start, stop)
        fetched = self.store.read_range(self.key, start, min(self.length, start + MIN_READ))
        self.cached = (start, fetched)
        return fetched[:stop - start]
