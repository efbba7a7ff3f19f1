"""The scheme registry: which module serves a URI, what may be done with it, and whole-object reads by URI."""

from __future__ import annotations

import os

import pytest

from sdbatch.settings import S3Settings
from sdbatch.store import SCHEMES, carries_secret, is_remote, is_remote_store, open_store, scheme_of
from sdbatch.store.local import LocalStore
from sdbatch.store.s3 import S3Store
from tests.support.util import run_cli


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



def test_every_scheme_is_named_by_its_module_and_plain_paths_are_local_files():
    assert scheme_of("/data/run") is SCHEMES["file"] and scheme_of("rel/x.png") is SCHEMES["file"]
    assert scheme_of("S3://Bucket/k") is SCHEMES["s3"] and scheme_of("https://h/x.png") is SCHEMES["https"]
    with pytest.raises(ValueError, match="gs://bucket/x.*use a local path or one of s3://, http://, https://"):
        scheme_of("gs://bucket/x")


def test_remote_and_remote_store_follow_the_registry_and_unknown_schemes_stay_paths():
    assert [is_remote(u) for u in ("s3://b/k", "http://h/x", "/tmp/x", "x.png", "gs://b/k")] == [
        True, True, False, False, False]
    assert [is_remote_store(u) for u in ("s3://b/k", "https://h/x", "/tmp/x")] == [True, False, False]


def test_only_stores_open_as_stores():
    for uri in ("https://host/run", "http://host/run"):
        with pytest.raises(ValueError, match="use one of /path/to/folder, s3://bucket/prefix"):
            open_store(uri)


def test_a_uri_carries_a_secret_only_where_its_scheme_says_so():
    assert carries_secret("https://user:pw@host/x.png")
    assert carries_secret("https://host/x.png?X-Amz-Signature=abc&X-Amz-Credential=k")
    assert not carries_secret("https://host/x.png?size=512")
    assert not carries_secret("s3://bucket/key?token=x") and not carries_secret("/tmp/token=x")
    assert not carries_secret("gs://bucket/x?token=x")  # not a scheme sdbatch reads: refused where it is used


@pytest.mark.parametrize("output", ["gs://bucket/run", "https://host/run", "s3://", "s3://bkt/a/../b"])
def test_a_uri_no_store_serves_is_a_one_line_error_with_exit_2(output):
    done = run_cli("status", output)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: ") and output in done.stderr.replace("\n", "")
