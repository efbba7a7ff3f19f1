"""Key/value blob stores for rendered outputs: a local directory (local.py) or an S3-compatible bucket (s3.py)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from sdbatch.settings import S3Settings
from sdbatch.store.base import Store
from sdbatch.store.local import LocalStore


def open_store(uri: str, s3: S3Settings | None = None) -> Store:
    """Store for an s3:// URI, a file:// URI or a plain local path."""
    if uri.startswith("s3://"):
        from sdbatch.store.s3 import (
            S3Store,  # boto3 is imported only by runs that use S3
        )

        return S3Store(uri, s3)
    if uri.startswith("file://"):
        return LocalStore(urlsplit(uri).path)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", uri):
        raise ValueError(f"unsupported storage URI {uri!r}: use a local path or s3://bucket/prefix")
    return LocalStore(uri)
