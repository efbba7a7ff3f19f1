"""Reading variant inputs (control, init and mask images, LoRA files) by URI, and prefetching them."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import os
import pathlib
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from sdbatch.errors import FetchError, InputUnavailable, VariantError, reading
from sdbatch.settings import S3Settings
from sdbatch.store import Reader


@contextlib.contextmanager
def labelled(label: str):
    """Re-raise any failure inside as a VariantError that starts with `label` (e.g. "LoRA s3://b/x");
    InputUnavailable stays what it is, labelled too."""
    try:
        yield
    except InputUnavailable as exc:
        raise InputUnavailable(f"{label}: {exc}") from exc
    except VariantError as exc:
        raise VariantError(f"{label}: {exc}") from exc
    except Exception as exc:
        raise VariantError(f"{label}: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class Fetched:
    data: bytes
    sha256: str


class Fetcher:
    """Reads whole objects by URI, whatever the scheme (store.Reader: one client per bucket, shared by threads)."""

    def __init__(self, s3: S3Settings | None = None, timeout: float = 30.0):
        self.s3 = s3
        self.reader = Reader(s3, timeout)

    def read(self, uri: str) -> Fetched:
        with reading(FetchError, "cannot read it"):
            data = self.reader.read(uri)
        return Fetched(data, hashlib.sha256(data).hexdigest())

    def download(self, uri: str, folder: pathlib.Path) -> pathlib.Path:
        """A node-local copy of an object in a store, keyed by its tag (ETag and size): an object overwritten in
        place is fetched again. Streamed to disk; concurrent actors on a node each publish it atomically."""
        with reading(FetchError, "cannot read it"):
            store, key = self.reader.store_of(uri)
            tag = store.tags(key).get(key)
            if tag is None:
                raise FetchError("no such object")
            name = hashlib.sha256(f"{self.s3.endpoint_url if self.s3 else ''}|{uri}|{tag}".encode()).hexdigest()
            target = folder / name[:16] / key.rsplit("/", 1)[-1]
            if target.is_file():
                return target
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            try:
                store.download(key, str(staging))
                os.replace(staging, target)
            finally:
                staging.unlink(missing_ok=True)
        return target


def decode_image(fetched: Fetched, size: tuple[int, int]) -> Image.Image:
    """RGB at the row's (width, height): ControlNets condition pixel for pixel on the output size."""
    with Image.open(io.BytesIO(fetched.data)) as image:
        rgb = image.convert("RGB")
    return rgb if rgb.size == size else rgb.resize(size, Image.Resampling.BICUBIC)


class Prefetcher:
    """Fetches a shard's images in use order on a few threads, at most `ahead` unconsumed at a time.

    Each URI is fetched once however many rows use it; its bytes are dropped after its last use.
    """

    def __init__(self, fetcher: Fetcher, uris: Iterable[str], threads: int, ahead: int):
        self._fetcher = fetcher
        self._uses = collections.Counter(uris)
        self._queue = collections.deque(self._uses)  # distinct URIs, first-use order
        self._futures: dict[str, Future] = {}
        self._ahead = ahead
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="sdbatch-fetch") if self._queue else None
        self._top_up()

    def _top_up(self) -> None:
        while self._queue and len(self._futures) < self._ahead:
            uri = self._queue.popleft()
            self._futures[uri] = self._pool.submit(self._fetcher.read, uri)

    def get(self, uri: str) -> Fetched:
        """The URI's bytes (raising its FetchError); a URI that was not announced is read here and now."""
        if uri not in self._futures:
            if self._uses[uri] <= 0:  # not announced, or used more often than announced
                return self._fetcher.read(uri)
            self._queue.remove(uri)  # needed before its turn: fetch it now rather than wait
            self._futures[uri] = self._pool.submit(self._fetcher.read, uri)
        future = self._futures[uri]
        self._uses[uri] -= 1
        if self._uses[uri] <= 0:
            del self._futures[uri]
            self._top_up()
        return future.result()

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
