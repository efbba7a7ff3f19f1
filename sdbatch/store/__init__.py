"""Storage schemes: the one place that maps a URI (a local path, s3://, http(s)://) to the store or reader for it.

Each scheme is a module (local.py, s3.py, http.py) with `read(uri, reader)`, and for stores `open_store(uri, s3)` and
`split(uri)` (the store's root and the key), optionally `carries_secret(uri)`. Adding one (GCS, say) is a module and
a line in SCHEMES. Every other package asks here what a URI is."""

from __future__ import annotations

import importlib
import re
import threading
from dataclasses import dataclass

from sdbatch.errors import UsageError
from sdbatch.settings import S3Settings
from sdbatch.store.base import Store


@dataclass(frozen=True)
class Scheme:
    """What sdbatch may do with the URIs of one scheme."""

    # The module serving it, imported on first use: boto3 is loaded only by runs that use s3://.
    module: str
    # Not this machine's disk: nothing can be checked locally before the run, the actors read it themselves.
    remote: bool
    # A store (listing, create-once writes, streamed downloads): an output, a model folder, a LoRA file. Else
    # whole objects are only read (input images).
    writable: bool
    # How a URI of the scheme looks, for messages.
    example: str


SCHEMES = {
    "file": Scheme("sdbatch.store.local", remote=False, writable=True, example="/path/to/folder"),
    "s3": Scheme("sdbatch.store.s3", remote=True, writable=True, example="s3://bucket/prefix"),
    "http": Scheme("sdbatch.store.http", remote=True, writable=False, example="https://host/image.png"),
    "https": Scheme("sdbatch.store.http", remote=True, writable=False, example="https://host/image.png"),
}
# RFC 3986's scheme: a letter, then letters, digits, '+', '-', '.'.
SCHEME_PATTERN = r"^[a-zA-Z][a-zA-Z0-9+.-]*://"
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def scheme_of(uri: str) -> Scheme:
    """The scheme of a URI; a plain path is a local file. UsageError names the schemes there are."""
    found = _SCHEME.match(uri)
    name = found.group(1).lower() if found else "file"
    if name not in SCHEMES:
        raise UsageError(f"unsupported URI {uri!r}: use a local path or one of "
                         f"{', '.join(s + '://' for s in SCHEMES if s != 'file')}")
    return SCHEMES[name]


def _known(uri: str) -> Scheme | None:
    """The URI's scheme if it names one sdbatch serves; None for a plain path and for unknown schemes, which
    are then taken as paths and reported missing where they are used."""
    found = _SCHEME.match(uri)
    return SCHEMES.get(found.group(1).lower()) if found else None


def is_remote(uri: str) -> bool:
    """Whether the URI names something off this machine's disk (s3://, http(s)://)."""
    scheme = _known(uri)
    return scheme is not None and scheme.remote


def is_remote_store(uri: str) -> bool:
    """Whether the URI names a store off this machine (s3://): one every node of a cluster can write and list."""
    scheme = _known(uri)
    return scheme is not None and scheme.remote and scheme.writable


def _module(uri: str):
    return importlib.import_module(scheme_of(uri).module)


def open_store(uri: str, s3: S3Settings | None = None) -> Store:
    """The store at a URI: a local folder (a path or file://) or an S3-compatible prefix."""
    return _store_module(uri).open_store(uri, s3)


def _store_module(uri: str):
    if not scheme_of(uri).writable:
        writable = ", ".join(dict.fromkeys(s.example for s in SCHEMES.values() if s.writable))
        raise UsageError(f"unsupported storage URI {uri!r}: use one of {writable}")
    return _module(uri)


def carries_secret(uri: str) -> bool:
    """Whether the URI itself holds a credential (a password, a presigned signature), which would be published
    wherever it is recorded."""
    if _known(uri) is None:
        return False
    check = getattr(_module(uri), "carries_secret", None)
    return bool(check and check(uri))


class Reader:
    """Whole objects by URI, whatever the scheme; one store per root, shared by threads (building a client costs
    more than a small read). Missing objects raise ObjectNotFound, other failures StoreError or the scheme's own."""

    def __init__(self, s3: S3Settings | None = None, timeout: float = 30.0):
        self.s3 = s3
        self.timeout = timeout  # per request, for schemes that are not stores (http)
        self._stores: dict[str, Store] = {}
        self._lock = threading.Lock()

    def read(self, uri: str) -> bytes:
        return _module(uri).read(uri, self)

    def store_of(self, uri: str) -> tuple[Store, str]:
        """The store holding the object and its key there."""
        root, key = _store_module(uri).split(uri)
        with self._lock:
            if root not in self._stores:
                self._stores[root] = open_store(root, self.s3)
            return self._stores[root], key


__all__ = ["SCHEMES", "Reader", "Scheme", "carries_secret", "is_remote", "is_remote_store", "open_store", "scheme_of"]
