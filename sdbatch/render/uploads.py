"""Image encoding and create-once writes beside rendering, with a bound that slows rendering rather than grow memory."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from sdbatch.render.encode import encode_image
from sdbatch.storage import PutResult, Store


class Uploads:
    """At most `threads` encodes/writes at once and as many queued; submit() blocks while all slots are taken."""

    def __init__(self, store: Store, threads: int):
        self.store = store
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="sdbatch-io")
        # Bounds the images waiting to be encoded/written, so a slow store slows rendering, not memory.
        self._slots = threading.BoundedSemaphore(threads * 2)

    def submit(self, image, key: str, image_format: str, quality: int) -> Future:
        """Encode and write the image; the returned future holds the PutResult (or the write's error)."""
        self._slots.acquire()

        def encode_and_put() -> PutResult:
            try:
                return self.store.put_once(key, encode_image(image, image_format, quality))
            finally:
                self._slots.release()

        try:
            return self._pool.submit(encode_and_put)
        except BaseException:
            self._slots.release()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True)
