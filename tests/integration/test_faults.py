"""The fault matrix on a real local Ray and a real S3 server: what overnight runs meet, nothing lost."""

import glob
import subprocess
from pathlib import Path

import pytest

from sdbatch.settings import S3Settings
from sdbatch.store import open_store
from tests.support.faults import FaultProxy
from tests.support.util import REPO, SDBATCH, assert_exactly_once, run_cli, tiny_rows, write_manifest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_cache")]
JOB = str(REPO / "jobs" / "demo.toml")


def _flaky(method: str, path: str, n: int) -> str | None:
    if "_probe" in path:
        return None  # the start-up check is a separate case (unreachable store)
    if n % 6 == 1:
        return "slowdown"
    if n % 9 == 4:
        return "reset"
    if method == "PUT" and n % 8 == 2:
        return "drop_after_write"
    if n % 10 == 5:
        return "delay"
    return None


def test_slowdowns_resets_lost_write_responses_and_slow_answers_lose_nothing(tmp_path, seaweed, s3_env, new_bucket):
    rows = tiny_rows(12)
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    output = f"s3://{new_bucket}/flaky"
    with FaultProxy(s3_env, _flaky, delay=0.3) as proxy:
        result = run_cli("submit", str(manifest), "--output", output, "--s3-endpoint", proxy.endpoint,
                         "--job", JOB, "--steps", "2", "--shard-size", "2", "--actors", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {"slowdown", "reset", "drop_after_write", "delay"} <= set(proxy.log.counts), proxy.log.counts
    assert_exactly_once(open_store(output, S3Settings(endpoint_url=s3_env)), [r["id"] for r in rows])


def test_a_shard_that_keeps_failing_is_given_up_reported_and_resumed_later(tmp_path, seaweed, s3_env, new_bucket):
    rows = tiny_rows(8)
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    output = f"s3://{new_bucket}/stubborn"
    args = ["submit", str(manifest), "--output", output, "--job", JOB, "--steps", "2", "--shard-size", "2",
            "--actors", "1"]

    def deny_shard_1(method, path, n):
        return "denied" if method == "PUT" and "/images/000001/" in path else None

    with FaultProxy(s3_env, deny_shard_1) as proxy:
        failed = run_cli(*args, "--s3-endpoint", proxy.endpoint)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    out = " ".join(failed.stdout.split())
    assert "shard 000001 not done" in out and "access denied" in out
    store = open_store(output, S3Settings(endpoint_url=s3_env))
    assert sorted(store.list("_committed/")) == [f"_committed/{s:06d}.json" for s in (0, 2, 3)]
    assert not store.exists("_SUCCESS.json")

    healed = run_cli(*args, "--s3-endpoint", s3_env)
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert_exactly_once(store, [r["id"] for r in rows])


def test_two_drivers_on_one_output_render_each_row_once(tmp_path):
    rows = tiny_rows(12)
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    args = [*SDBATCH, "submit", str(manifest), "--output", str(out), "--job", JOB, "--steps", "4",
            "--shard-size", "2", "--actors", "1"]
    drivers = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [d.communicate(timeout=400)[0] for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], outputs
    assert_exactly_once(open_store(str(out)), [r["id"] for r in rows])


def test_credentials_never_reach_output_logs_or_job_files(tmp_path, seaweed, s3_env, new_bucket):
    secrets = [seaweed.env["AWS_SECRET_ACCESS_KEY"], seaweed.env["AWS_ACCESS_KEY_ID"]]
    ray_dirs_before = set(glob.glob("/tmp/sdbatch-ray-*"))
    manifest = write_manifest(tmp_path / "m.parquet", tiny_rows(4))
    output = f"s3://{new_bucket}/secret-scan"
    result = run_cli("submit", str(manifest), "--output", output, "--s3-endpoint", s3_env, "--job", JOB,
                     "--steps", "2", "--actors", "1", env={"RAY_BACKEND_LOG_LEVEL": "debug"})
    assert result.returncode == 0, result.stdout + result.stderr
    store = open_store(output, S3Settings(endpoint_url=s3_env))
    texts = {"stdout": result.stdout, "stderr": result.stderr}
    texts.update({key: store.get(key).decode("latin-1") for key in store.list()})
    new_dirs = set(glob.glob("/tmp/sdbatch-ray-*")) - ray_dirs_before
    assert new_dirs, "the run's Ray session logs should be scanned too"
    for path in (p for d in new_dirs for p in Path(d).rglob("*") if p.is_file() and "sockets" not in p.parts):
        texts[str(path)] = path.read_bytes().decode("latin-1")
    leaks = [where for where, text in texts.items() for secret in secrets if secret in text]
    assert leaks == []
    assert len(texts) > 20  # the scan really covered the store and the logs
