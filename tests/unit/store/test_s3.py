"""The s3:// scheme without a server: URIs and keys, the endpoint rule, no secrets in what it prints."""

from __future__ import annotations

import pytest

from sdbatch.settings import S3Settings
from sdbatch.store import s3
from sdbatch.store.base import resolve_endpoint
from sdbatch.store.s3 import S3Store


def test_an_s3_uri_splits_into_its_bucket_and_key():
    assert s3.split("s3://bkt/a/b.png") == ("s3://bkt", "a/b.png")
    assert s3.split("s3://bkt") == ("s3://bkt", "")


def test_an_s3_store_keeps_its_endpoints_credentials_out_of_its_repr_and_is_not_local():
    store = S3Store("s3://bkt/run/", S3Settings(endpoint_url="http://u:p@h:1"))
    assert store.uri == "s3://bkt/run" and store.url_for("k") == "s3://bkt/run/k"
    assert "u:p" not in repr(store) and store.local_folder() is None
    with pytest.raises(ValueError, match="expected s3://bucket/prefix"):
        S3Store("s3://")


def test_resolve_endpoint_precedence(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert resolve_endpoint(None) is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    assert resolve_endpoint(None) == "http://generic:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3only:2")
    assert resolve_endpoint(None) == "http://s3only:2"
    assert resolve_endpoint("http://flag:3") == "http://flag:3"
    assert resolve_endpoint("") == "http://s3only:2"
