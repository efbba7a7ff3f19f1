"""The stores without a server: local temp files and writability, endpoint precedence, open_store by URI."""

from __future__ import annotations

import os

import pytest

from sdbatch.errors import StoreError
from sdbatch.settings import S3Settings
from sdbatch.store import local, open_store
from sdbatch.store.base import resolve_endpoint
from sdbatch.store.local import LocalStore
from sdbatch.store.s3 import S3Store


def test_list_skips_local_temp_files(tmp_path):
    store = LocalStore(str(tmp_path))
    store.put("d/k", b"v")
    (tmp_path / "d" / f"{local._TMP_MARK}abc").write_bytes(b"half")  # as left by a crash
    assert store.list() == ["d/k"]


def test_local_check_writable_fails_clearly(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StoreError, match="cannot write"):
        LocalStore(str(tmp_path / "file" / "sub")).check_writable()


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


def test_open_store_dispatch(tmp_path):
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert open_store(f"file://{tmp_path}").uri == str(tmp_path)
    assert open_store("rel/dir").uri == os.path.abspath("rel/dir")
    s3 = open_store("s3://bkt/a/b/", S3Settings(endpoint_url="http://u:p@h:1"))
    assert isinstance(s3, S3Store) and s3.uri == "s3://bkt/a/b" and s3.url_for("k") == "s3://bkt/a/b/k"
    assert "u:p" not in repr(s3)
    for bad in ("gs://bkt/x", "s3://", "s3://bkt/a/../b"):
        with pytest.raises(ValueError):
            open_store(bad)


def test_local_list_reads_only_the_folder_the_prefix_names(tmp_path, monkeypatch):
    """A shard's commit lists its own metadata folder: that must not cost more as other shards pile up."""
    store = LocalStore(str(tmp_path))
    for shard in range(200):
        store.put(f"metadata/{shard:06d}/a.parquet", b"x")
    read = []
    scandir = os.scandir
    monkeypatch.setattr(local.os, "scandir", lambda path: read.append(os.path.relpath(path, tmp_path))
                        or scandir(path))
    assert store.list("metadata/000123/") == ["metadata/000123/a.parquet"]
    assert read == [os.path.join("metadata", "000123")]
    read.clear()
    # A partial name: its parent folder is read once, and only the matching subfolders below it.
    assert store.list("metadata/00012") == [f"metadata/{n:06d}/a.parquet" for n in range(120, 130)]
    assert sorted(read) == ["metadata"] + [os.path.join("metadata", f"{n:06d}") for n in range(120, 130)]
