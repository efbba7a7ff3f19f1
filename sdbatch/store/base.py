"""The Store protocol every store implements, key checks and the S3 endpoint rule; stdlib only (and errors)."""

from __future__ import annotations

import enum
import os
from typing import Protocol, runtime_checkable

from sdbatch.errors import UsageError


class PutResult(enum.Enum):
    CREATED = "created"
    IDENTICAL = "identical"
    CONFLICT = "conflict"


PROBE_DIR = "_probe"


def check_key(key: str) -> str:
    # Keys come from job specs; refuse anything that could escape the root.
    parts = key.split("/")
    if key.startswith("/") or "\\" in key or "\x00" in key or any(p in ("", ".", "..") for p in parts):
        raise UsageError(f"invalid key {key!r}: use a relative '/'-separated path")
    return key


def check_prefix(prefix: str) -> str:
    # A listing prefix may end in one '/' (a "directory") but is otherwise a key.
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def resolve_endpoint(flag: str | None) -> str | None:
    """Endpoint precedence: explicit flag, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL."""
    return flag or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@runtime_checkable
class Store(Protocol):
    """'/'-separated keys under a root URI; failures raise StoreError."""

    uri: str

    def put(self, key: str, data: bytes) -> None: ...  # create or overwrite; readers never see a mix
    def put_once(self, key: str, data: bytes) -> PutResult: ...  # create only if absent
    def get(self, key: str) -> bytes: ...  # ObjectNotFound if absent
    def read_range(self, key: str, start: int, stop: int) -> bytes: ...  # bytes [start, stop), fewer at the end
    def size(self, key: str) -> int: ...  # bytes; ObjectNotFound if absent
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...  # sorted, root-relative, recursive
    def tags(self, prefix: str = "") -> dict[str, str]: ...  # list(), each key with a tag that changes with it
    def download(self, key: str, path: str) -> None: ...  # to a local file, streamed (not whole in memory)
    def upload(self, path: str, key: str) -> None: ...  # put from a local file, streamed
    def delete(self, key: str) -> None: ...  # absent is fine: used for cleanup
    def check_writable(self) -> None: ...  # StoreError naming the fix if writes cannot work
    def url_for(self, key: str) -> str: ...
    def browser_url(self, key: str, expires: int, content_type: str | None = None) -> str: ...  # a page can link it
    def local_folder(self) -> str | None: ...  # the folder on this machine's disk; None for stores elsewhere
    def arrow_filesystem(self) -> tuple: ...  # (pyarrow filesystem, root path in it) for lazy datasets

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"
