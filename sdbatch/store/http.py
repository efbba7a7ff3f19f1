"""http(s):// inputs: whole objects read with urllib (input images); never a store, never written."""

from __future__ import annotations

import re
import urllib.parse
import urllib.request

# Query parameters that make a URL a credential (presigned S3/GCS/Azure links, tokens).
SECRET_QUERY = re.compile(r"(?i)(^|[?&])(x-amz-(signature|credential|security-token)|x-goog-(signature|credential)|"
                          r"signature|sig|token|access_token|api_key|key)=")


def read(uri: str, reader) -> bytes:
    with urllib.request.urlopen(uri, timeout=reader.timeout) as response:
        return response.read()


def carries_secret(uri: str) -> bool:
    """A password in the URL, or a query that signs it: recording the URL would publish the credential."""
    parts = urllib.parse.urlsplit(uri)
    return "@" in parts.netloc or bool(SECRET_QUERY.search(parts.query))
