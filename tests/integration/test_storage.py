"""Store semantics, checked alike on a local directory, SeaweedFS and moto."""

from __future__ import annotations

import logging
import pickle
import socket
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from sdbatch.errors import ObjectNotFound, StoreError, StoreUnavailable
from sdbatch.settings import S3Settings
from sdbatch.store import s3
from sdbatch.store.base import PutResult
from sdbatch.store.local import LocalStore
from sdbatch.store.s3 import S3Store
from tests.support.servers import free_ports


@pytest.fixture(scope="module")
def sw_shared_bucket(seaweed):
    # The first write to a new SeaweedFS bucket allocates a volume (~0.2 s);
    # sharing one bucket, with a fresh prefix per test, keeps the suite quick.
    return seaweed.create_bucket()


@pytest.fixture(params=["local", "seaweed", "moto"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(str(tmp_path / "root"))
    if request.param == "seaweed":
        endpoint = request.getfixturevalue("s3_env")
        # A nested root prefix, so the key <-> object-name mapping is exercised too.
        root = f"s3://{request.getfixturevalue('sw_shared_bucket')}/runs/{uuid.uuid4().hex}"
        return S3Store(root, S3Settings(endpoint_url=endpoint))
    endpoint = request.getfixturevalue("moto_env")
    return S3Store(f"s3://{request.getfixturevalue('moto_server').create_bucket()}", S3Settings(endpoint_url=endpoint))


@pytest.fixture
def sw_store(s3_env, sw_shared_bucket):
    return S3Store(f"s3://{sw_shared_bucket}/{uuid.uuid4().hex}", S3Settings(endpoint_url=s3_env))


def test_put_get_roundtrip(store):
    store.put("a/b/img.png", b"\x89PNG one")
    assert store.get("a/b/img.png") == b"\x89PNG one"
    store.put("a/b/img.png", b"two")
    assert store.get("a/b/img.png") == b"two"
    assert store.exists("a/b/img.png")
    assert not store.exists("a/b/other.png")
    assert store.url_for("a/b/img.png").endswith("a/b/img.png")


def test_get_missing_raises_object_not_found(store):
    with pytest.raises(ObjectNotFound) as info:
        store.get("nope/missing.png")
    assert isinstance(info.value, KeyError) and isinstance(info.value, StoreError)
    assert str(info.value) == f"{store.url_for('nope/missing.png')} does not exist"


def test_read_range_and_size(store):
    store.put("a/blob", bytes(range(200)))
    assert store.size("a/blob") == 200
    assert store.read_range("a/blob", 10, 14) == bytes([10, 11, 12, 13])
    assert store.read_range("a/blob", 190, 300) == bytes(range(190, 200))  # short at the end, as a file
    assert store.read_range("a/blob", 5, 5) == b""
    for read in (lambda: store.size("a/none"), lambda: store.read_range("a/none", 0, 4)):
        with pytest.raises(ObjectNotFound):
            read()


@pytest.mark.slow
def test_a_parquet_file_read_by_range_through_resets_and_slowdowns(s3_env, new_bucket):
    """StoreFile's reads go through the store's retries: compaction's tasks read manifest row groups this way."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from sdbatch.store.ranged import StoreFile
    from tests.support.faults import FaultProxy

    table = pa.table({"n": list(range(5000)), "text": [f"row {n}" for n in range(5000)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=500)
    S3Store(f"s3://{new_bucket}", S3Settings(endpoint_url=s3_env)).put("m.parquet", sink.getvalue())

    def rule(method: str, path: str, number: int) -> str | None:
        return {1: "reset", 2: "slowdown", 4: "reset"}.get(number % 5)

    with FaultProxy(s3_env, rule) as proxy:
        store = S3Store(f"s3://{new_bucket}", S3Settings(endpoint_url=proxy.endpoint))
        file = pq.ParquetFile(StoreFile(store, "m.parquet"))
        assert file.read_row_groups([3, 7]) == pa.concat_tables([table.slice(1500, 500), table.slice(3500, 500)])
    assert {"reset", "slowdown"} <= set(proxy.log.counts), proxy.log.counts


def test_delete_is_quiet_when_absent(store):
    store.put("k", b"v")
    store.delete("k")
    store.delete("k")
    assert not store.exists("k")


def test_put_once_same_bytes_is_identical(store):
    assert store.put_once("x/1.png", b"same") is PutResult.CREATED
    assert store.put_once("x/1.png", b"same") is PutResult.IDENTICAL


def test_put_once_different_bytes_conflicts_and_keeps_original(store):
    assert store.put_once("x/1.png", b"first") is PutResult.CREATED
    assert store.put_once("x/1.png", b"second!") is PutResult.CONFLICT
    assert store.put_once("x/1.png", b"firsT") is PutResult.CONFLICT  # same length, other bytes
    assert store.get("x/1.png") == b"first"


def test_put_once_compares_bytes_when_etag_is_not_plain_md5(sw_store, monkeypatch):
    sw_store.put_once("k", b"data")

    class NotMd5:
        def __init__(self, _data):
            pass

        def hexdigest(self):
            return "0" * 32

    monkeypatch.setattr(s3.hashlib, "md5", NotMd5)  # as for multipart / SSE-KMS ETags
    assert sw_store.put_once("k", b"data") is PutResult.IDENTICAL
    assert sw_store.put_once("k", b"diff") is PutResult.CONFLICT


def test_list_sorted_relative_recursive(store):
    for key in ["b/2", "a/sub/deep/3", "a/1", "ab/4", "c"]:
        store.put(key, key.encode())
    assert store.list() == ["a/1", "a/sub/deep/3", "ab/4", "b/2", "c"]
    assert store.list("a/") == ["a/1", "a/sub/deep/3"]
    assert store.list("a") == ["a/1", "a/sub/deep/3", "ab/4"]
    assert store.list("a/sub/de") == ["a/sub/deep/3"]
    assert store.list("zzz/") == []


def test_tags_follow_the_content_and_download_copies_it(store, tmp_path):
    """What the node caches of s3:// models and LoRAs key on: a tag per key that changes when it is overwritten."""
    store.put("m/a", b"one")
    store.put("m/b", b"bee")
    before = store.tags("m/")
    assert sorted(before) == store.list("m/") == ["m/a", "m/b"]
    store.put("m/a", b"two, longer")
    after = store.tags("m/")
    assert after["m/a"] != before["m/a"] and after["m/b"] == before["m/b"]
    store.download("m/a", str(tmp_path / "a"))
    assert (tmp_path / "a").read_bytes() == b"two, longer"
    with pytest.raises(ObjectNotFound):
        store.download("m/none", str(tmp_path / "none"))


def test_s3_list_stays_inside_root_prefix(s3_env, new_bucket):
    inner = S3Store(f"s3://{new_bucket}/run", S3Settings(endpoint_url=s3_env))
    sibling = S3Store(f"s3://{new_bucket}/runner", S3Settings(endpoint_url=s3_env))
    inner.put("a", b"1")
    sibling.put("b", b"2")
    assert inner.list() == ["a"]
    assert sibling.list() == ["b"]


def test_s3_list_paginates_past_1000_keys(sw_store):
    keys = [f"many/{i:05d}.png" for i in range(1100)]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda k: sw_store.put(k, b""), keys))
    sw_store.put("other", b"")
    assert sw_store.list("many/") == keys
    assert len(sw_store.list()) == 1101


@pytest.mark.parametrize("key", ["../x", "a/../b", "a/..", "/abs", "a\\b", "a//b", "", "a/", "./a", "a\x00b"])
def test_bad_keys_rejected(store, key):
    for call in (lambda: store.put(key, b"x"), lambda: store.put_once(key, b"x"), lambda: store.get(key),
                 lambda: store.exists(key), lambda: store.delete(key), lambda: store.url_for(key)):
        with pytest.raises(ValueError):
            call()


@pytest.mark.parametrize("prefix", ["../", "/abs", "a//", "a\\"])
def test_bad_list_prefix_rejected(store, prefix):
    with pytest.raises(ValueError):
        store.list(prefix)


def test_concurrent_put_once_creates_exactly_once(store):
    barrier = threading.Barrier(8)

    def attempt(i):
        barrier.wait()
        return store.put_once("race/img.png", f"writer {i}".encode())

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))
    assert results.count(PutResult.CREATED) == 1
    assert results.count(PutResult.CONFLICT) == 7
    winner = results.index(PutResult.CREATED)
    assert store.get("race/img.png") == f"writer {winner}".encode()


def test_store_survives_pickling(store, seaweed):
    store.put("before", b"1")  # builds the client, which must not travel
    blob = pickle.dumps(store)
    assert seaweed.env["AWS_SECRET_ACCESS_KEY"].encode() not in blob
    clone = pickle.loads(blob)
    assert clone.uri == store.uri
    clone.put("after", b"2")
    assert clone.get("before") == b"1"
    assert store.get("after") == b"2"


def test_check_writable_ok_and_leaves_nothing(store):
    store.check_writable()
    assert store.list() == []


def _check_fails(store) -> tuple[StoreError, float]:
    start = time.monotonic()
    with pytest.raises(StoreError) as info:
        store.check_writable()
    return info.value, time.monotonic() - start


def test_check_writable_closed_port(s3_env):
    (port,) = free_ports(1)
    endpoint = f"http://127.0.0.1:{port}"
    err, elapsed = _check_fails(S3Store("s3://bucket/x", S3Settings(endpoint_url=endpoint)))
    assert elapsed < 15
    assert f"cannot reach S3 endpoint {endpoint} (connection refused)" in str(err)
    assert "AWS_ENDPOINT_URL" in str(err)


@pytest.mark.slow
def test_failures_that_may_pass_are_told_apart_from_refusals_and_absences(s3_env, new_bucket):
    """StoreUnavailable (unreachable, throttled, server errors, after retries) is what makes a shard retry an
    input instead of failing its row for good; a refusal or a missing key must not read as one."""
    from tests.support.faults import FaultProxy

    def rule(method: str, path: str, number: int) -> str | None:
        return {"slow": "slowdown", "denied": "denied"}.get(path.rsplit("/", 1)[-1])

    with FaultProxy(s3_env, rule) as proxy:
        store = S3Store(f"s3://{new_bucket}", S3Settings(endpoint_url=proxy.endpoint, max_attempts=2))
        with pytest.raises(StoreUnavailable, match="SlowDown"):
            store.get("slow")
        for key, kind in (("denied", StoreError), ("absent", ObjectNotFound)):
            with pytest.raises(kind) as info:
                store.get(key)
            assert not isinstance(info.value, StoreUnavailable), key
    (port,) = free_ports(1)
    with pytest.raises(StoreUnavailable, match="cannot reach S3 endpoint"):
        S3Store("s3://bucket", S3Settings(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1)).get("k")


def test_check_writable_unresponsive_endpoint(s3_env):
    # Accepts TCP connections (kernel backlog) but never answers: like a hung proxy.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        err, elapsed = _check_fails(S3Store("s3://bucket", S3Settings(endpoint_url=endpoint)))
    assert elapsed < 15
    assert f"cannot reach S3 endpoint {endpoint}" in str(err)


def test_check_writable_missing_bucket(s3_env):
    err, elapsed = _check_fails(S3Store("s3://no-such-bucket-sdb/p", S3Settings(endpoint_url=s3_env)))
    assert elapsed < 15
    assert str(err) == f"bucket 'no-such-bucket-sdb' does not exist at {s3_env}; create it first"


def _assert_no_secrets(err: BaseException, *secrets: str) -> None:
    text = "".join(traceback.format_exception(err)) + repr(err)
    for secret in secrets:
        assert secret not in text


@pytest.mark.parametrize("which", ["secret", "access_key"])
def test_check_writable_wrong_credentials(s3_env, new_bucket, seaweed, monkeypatch, which):
    if which == "secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-SDB123")
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUNKNOWNSDB")
    err, elapsed = _check_fails(S3Store(f"s3://{new_bucket}", S3Settings(endpoint_url=s3_env)))
    assert elapsed < 15
    assert "access denied" in str(err) and "check AWS credentials" in str(err) and new_bucket in str(err)
    _assert_no_secrets(err, "wrong-secret-SDB123", seaweed.env["AWS_SECRET_ACCESS_KEY"])


def test_check_writable_read_only_identity(s3_env, new_bucket, seaweed, monkeypatch):
    for name, value in seaweed.reader_env.items():
        monkeypatch.setenv(name, value)
    store = S3Store(f"s3://{new_bucket}", S3Settings(endpoint_url=s3_env))
    assert store.list() == []  # reading is allowed...
    err, _ = _check_fails(store)  # ...writing is not
    assert "access denied (AccessDenied) trying to write" in str(err)
    _assert_no_secrets(err, seaweed.reader_env["AWS_SECRET_ACCESS_KEY"])


def test_missing_credentials_message(s3_env, new_bucket, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # don't wait on IMDS
    with pytest.raises(StoreError, match="no usable AWS credentials"):
        S3Store(f"s3://{new_bucket}", S3Settings(endpoint_url=s3_env)).put("k", b"v")


def test_debug_logging_does_not_leak_credentials(sw_store, seaweed, caplog):
    caplog.set_level(logging.DEBUG)
    sw_store.put("logged", b"v")
    sw_store.put_once("logged", b"v")
    sw_store.get("logged")
    assert "logged" in sw_store.list()
    assert seaweed.env["AWS_SECRET_ACCESS_KEY"] not in caplog.text
    assert seaweed.env["AWS_ACCESS_KEY_ID"] not in caplog.text
    assert seaweed.env["AWS_SECRET_ACCESS_KEY"] not in repr(sw_store)
