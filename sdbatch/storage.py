"""Key/value blob stores for rendered outputs: a local directory or an S3-compatible bucket."""

from __future__ import annotations

import contextlib
import enum
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit


class StoreError(Exception):
    """A storage failure, phrased for the user; never carries credentials."""


class StoreUnavailable(StoreError):
    """The store could not be reached, or answered with a server error or throttling, after its retries:
    a condition that may pass, unlike a missing object or a refusal."""


class ObjectNotFound(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return Exception.__str__(self)


@dataclass(frozen=True)
class S3Settings:
    # None lets botocore choose; callers pass resolve_endpoint(flag) to honour env vars.
    endpoint_url: str | None = None
    # None: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1, which S3 clones accept.
    region: str | None = None
    # Standard mode backs off exponentially: 8 rides out throttling, not an outage.
    max_attempts: int = 8
    # One connection per upload thread; a smaller pool makes threads queue.
    max_pool_connections: int = 32
    # A healthy endpoint connects in milliseconds; 5 s still tolerates a loaded one.
    connect_timeout: float = 5.0
    # Generous so image-sized PUTs over a slow link are not cut off.
    read_timeout: float = 60.0


class PutResult(enum.Enum):
    CREATED = "created"
    IDENTICAL = "identical"
    CONFLICT = "conflict"


_TMP_MARK = ".sdbatch-tmp-"
PROBE_DIR = "_probe"


def check_key(key: str) -> str:
    # Keys come from job specs; refuse anything that could escape the root.
    parts = key.split("/")
    if key.startswith("/") or "\\" in key or "\x00" in key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid key {key!r}: use a relative '/'-separated path")
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
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...  # sorted, root-relative, recursive
    def tags(self, prefix: str = "") -> dict[str, str]: ...  # list(), each key with a tag that changes with it
    def download(self, key: str, path: str) -> None: ...  # to a local file, streamed (not whole in memory)
    def delete(self, key: str) -> None: ...  # absent is fine: used for cleanup
    def check_writable(self) -> None: ...  # StoreError naming the fix if writes cannot work
    def url_for(self, key: str) -> str: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class LocalStore(Store):
    def __init__(self, root: str) -> None:
        self.uri = os.path.abspath(os.path.expanduser(root))

    def url_for(self, key: str) -> str:
        return os.path.join(self.uri, *check_key(key).split("/"))

    @contextlib.contextmanager
    def _staged(self, action: str, key: str, data: bytes):
        """Yield (tmp, final) with data in tmp beside final; tmp is gone afterwards."""
        path = self.url_for(key)
        # Same directory, so link/replace never crosses filesystems.
        tmp = os.path.join(os.path.dirname(path), f"{_TMP_MARK}{uuid.uuid4().hex[:12]}")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            yield tmp, path
        except OSError as e:
            raise StoreError(f"cannot {action} {path}: {e.strerror or e}") from e
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def put(self, key: str, data: bytes) -> None:
        with self._staged("write", key, data) as (tmp, path):
            os.replace(tmp, path)

    def put_once(self, key: str, data: bytes) -> PutResult:
        with self._staged("write", key, data) as (tmp, path):
            try:
                # link() never replaces and publishes the complete file at once.
                os.link(tmp, path)
                return PutResult.CREATED
            except FileExistsError:
                pass
        return PutResult.IDENTICAL if self.get(key) == data else PutResult.CONFLICT

    def get(self, key: str) -> bytes:
        path = self.url_for(key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise ObjectNotFound(f"{path} does not exist") from e
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror or e}") from e

    def exists(self, key: str) -> bool:
        return os.path.isfile(self.url_for(key))

    def list(self, prefix: str = "") -> list[str]:
        # Walk only the deepest directory the prefix pins down, then filter.
        check_prefix(prefix)
        start = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        keys = []
        for folder, _dirs, files in os.walk(os.path.join(self.uri, *start.split("/"))):
            rel = os.path.relpath(folder, self.uri).replace(os.sep, "/")
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if not name.startswith(_TMP_MARK) and key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def tags(self, prefix: str = "") -> dict[str, str]:
        tags = {}
        for key in self.list(prefix):
            with contextlib.suppress(FileNotFoundError):  # deleted since the listing: not there
                st = os.stat(self.url_for(key))
                tags[key] = f"{st.st_size}:{st.st_mtime_ns}"
        return tags

    def download(self, key: str, path: str) -> None:
        try:
            shutil.copyfile(self.url_for(key), path)
        except (FileNotFoundError, IsADirectoryError) as e:
            raise ObjectNotFound(f"{self.url_for(key)} does not exist") from e
        except OSError as e:
            raise StoreError(f"cannot copy {self.url_for(key)} to {path}: {e.strerror or e}") from e

    def delete(self, key: str) -> None:
        path = self.url_for(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(f"cannot delete {path}: {e.strerror or e}") from e

    def check_writable(self) -> None:
        existed = os.path.isdir(self.uri)
        key = f"{PROBE_DIR}/{uuid.uuid4().hex}"
        self.put(key, b"probe")
        self.delete(key)
        with contextlib.suppress(OSError):  # tidy up unless another probe is mid-flight
            os.rmdir(os.path.join(self.uri, PROBE_DIR))
            if not existed:  # a run that stops before writing leaves no trace
                os.rmdir(self.uri)


def open_store(uri: str, s3: S3Settings | None = None) -> Store:
    """Store for an s3:// URI, a file:// URI or a plain local path."""
    if uri.startswith("s3://"):
        from sdbatch.s3 import S3Store  # boto3 is imported only by runs that use S3

        return S3Store(uri, s3)
    if uri.startswith("file://"):
        return LocalStore(urlsplit(uri).path)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", uri):
        raise ValueError(f"unsupported storage URI {uri!r}: use a local path or s3://bucket/prefix")
    return LocalStore(uri)


def __getattr__(name: str):
    # S3Store lives in sdbatch.s3 (it needs boto3); keep `from sdbatch.storage import S3Store` working.
    if name == "S3Store":
        from sdbatch.s3 import S3Store

        return S3Store
    raise AttributeError(name)
