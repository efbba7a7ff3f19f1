"""Image encoding and create-once writes beside rendering, with a bound that slows rendering rather than grow memory."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from sdbatch.output.formats import encode_image
from sdbatch.store.base import Store

T = TypeVar("T")


class Uploads:
    """At most `threads` encodes/writes at once and as many queued; submit() blocks while all slots are taken."""

    def __init__(self, store: Store, threads: int):
        self.store = store
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="sdbatch-io")
        # Bounds the images waiting to be encoded/written, so a slow store slows rendering, not memory.
        self._slots = threading.BoundedSemaphore(threads * 2)

    def submit(self, image, key: str, image_format: str, quality: int, parameters: str | None = None) -> Future:
        """Encode and write the image; the returned future holds the PutResult (or the write's error)."""
        return self._run(lambda: self.store.put_once(key, encode_image(image, image_format, quality, parameters)))

    def encode(self, image, image_format: str, quality: int, parameters: str | None = None) -> Future:
        """Encode only (the webdataset layout writes the shard's images together, in its tar): a future of bytes."""
        return self._run(lambda: encode_image(image, image_format, quality, parameters))

    def _run(self, work: Callable[[], T]) -> Future:
        self._slots.acquire()

        def run() -> T:
            try:
                return work()
            finally:
                self._slots.release()

        try:
            return self._pool.submit(run)
        except BaseException:
            self._slots.release()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True)

