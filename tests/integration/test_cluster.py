"""On a real multi-node Ray (head + GPU-faked workers): Ray Jobs submission, status/logs/cancel, lost nodes."""

import json
import os
import subprocess
import time

import pytest

from sdbatch.settings import S3Settings
from sdbatch.store import open_store
from tests.support.clusters import LocalCluster
from tests.support.util import (
    REPO,
    SDBATCH,
    assert_exactly_once,
    demo_job_with,
    run_cli,
    tiny_rows,
    unwrapped,
    write_manifest,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_cache")]
JOB = str(REPO / "jobs" / "demo.toml")


@pytest.fixture(scope="module")
def cluster(seaweed, tiny_cache):
    saved = dict(os.environ)
    os.environ.update(seaweed.env)  # the cluster's processes (job drivers, actors) inherit these
    try:
        local = LocalCluster(workers=2)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield local
    local.shutdown()


def _wait_for(predicate, limit: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _both_actors_committed(out) -> bool:
    """Whether shards of two different actors have committed: both warm, so either node's loss is seen."""
    import pyarrow.parquet as pq

    folder = out / "metadata"
    tables = [pq.read_table(path, columns=["actor"]) for path in folder.glob("*/*.parquet")] if folder.exists() else []
    return len({actor for table in tables for actor in table.column("actor").to_pylist()}) >= 2


def _job_state(cluster, output: str) -> str | None:
    """The Ray Job state of the run writing `output`, straight from the Jobs API (no CLI start per poll)."""
    from ray.job_submission import JobSubmissionClient

    jobs = sorted((j for j in JobSubmissionClient(cluster.dashboard).list_jobs()
                   if j.metadata.get("sdbatch_output") == output), key=lambda j: j.start_time or 0)
    return str(jobs[-1].status.value) if jobs else None


def test_jobs_submission_runs_after_the_submitter_exits(tmp_path, cluster, seaweed, s3_env, new_bucket):
    rows = tiny_rows(12)
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    output = f"s3://{new_bucket}/jobs-run"
    args = ["submit", str(manifest), "--output", output, "--s3-endpoint", s3_env, "--job", JOB,
            "--steps", "4", "--shard-size", "2", "--address", cluster.dashboard]
    first = run_cli(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "submitted" in first.stdout
    again = run_cli(*args)  # the submitting process above has exited; the run goes on without it
    assert again.returncode == 0 and "not submitted again" in again.stdout, again.stdout + again.stderr

    _wait_for(lambda: _job_state(cluster, output) in ("SUCCEEDED", "FAILED", "STOPPED"), 300, "the job", 0.2)
    status = run_cli("status", output, "--s3-endpoint", s3_env)
    assert "ray_job: " in status.stdout and "SUCCEEDED" in status.stdout, status.stdout + status.stderr
    store = open_store(output, S3Settings(endpoint_url=s3_env))
    assert_exactly_once(store, [r["id"] for r in rows])
    logs = run_cli("logs", output, "--s3-endpoint", s3_env)
    assert logs.returncode == 0 and "run summary" in logs.stdout

    from ray.job_submission import JobSubmissionClient

    jobs = [j for j in JobSubmissionClient(cluster.dashboard).list_jobs()
            if j.metadata.get("sdbatch_output") == output]
    assert len(jobs) == 1  # the second submit did not double the run
    job_text = json.dumps([jobs[0].entrypoint, jobs[0].runtime_env, jobs[0].metadata], default=str)
    assert not any(secret in job_text for secret in (seaweed.env["AWS_SECRET_ACCESS_KEY"],
                                                        seaweed.env["AWS_ACCESS_KEY_ID"]))


def test_local_output_with_a_remote_cluster_is_refused(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", tiny_rows(2))
    result = run_cli("submit", str(manifest), "--output", str(tmp_path / "out"),
                     "--address", "http://127.0.0.1:1", "--model", "tiny:sd15")
    assert result.returncode == 2 and "use --output s3://" in " ".join(result.stderr.split())
    assert not (tmp_path / "out").exists()


def test_cancel_stops_the_run_and_the_same_submit_resumes_it(tmp_path, cluster, s3_env, new_bucket):
    rows = tiny_rows(24)
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    output = f"s3://{new_bucket}/cancelled"
    args = ["submit", str(manifest), "--output", output, "--s3-endpoint", s3_env, "--job", JOB,
            "--steps", "20", "--shard-size", "2", "--address", cluster.dashboard]
    assert run_cli(*args).returncode == 0
    store = open_store(output, S3Settings(endpoint_url=s3_env))
    _wait_for(lambda: store.exists("job.json") and len(store.list("_committed/")) >= 2, 300, "first shards", 0.2)
    cancelled = run_cli("cancel", output, "--s3-endpoint", s3_env)
    assert cancelled.returncode == 0, cancelled.stderr
    _wait_for(lambda: _job_state(cluster, output) == "STOPPED", 60, "the stop", 0.2)
    status = run_cli("status", output, "--s3-endpoint", s3_env)
    assert "STOPPED" in status.stdout, status.stdout + status.stderr
    # In-flight commits of the stopped run land before its actors are gone; after that nothing can write.
    _wait_for(lambda: not cluster.nodes_with_actors(), 60, "the stopped run's actors to exit", 0.2)
    before = {k: store.get(k) for k in store.list("_committed/")}
    assert len(before) < 12, "the run should have been stopped before it finished"

    resumed = run_cli(*args, "--follow", timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_exactly_once(store, [r["id"] for r in rows])
    assert all(store.get(k) == v for k, v in before.items())  # committed shards were not redone


def test_a_worker_node_lost_mid_run_moves_its_shards(tmp_path, cluster):
    rows = tiny_rows(24)
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    # 32x32: a 2-row shard still takes tenths of a second, far more than finding and removing the node.
    driver = subprocess.Popen([*SDBATCH, "submit", str(manifest), "--output", str(out), "--job", JOB,
                               "--steps", "20", "--width", "32", "--height", "32", "--shard-size", "2",
                               "--address", cluster.address],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: _both_actors_committed(out), 300, "both actors' first shards", 0.05)
    hosting = cluster.nodes_with_actors()
    assert len(hosting) == 2
    cluster.remove(hosting[0])
    output, _ = driver.communicate(timeout=400)
    assert driver.returncode == 0, output
    store = open_store(str(out))
    assert_exactly_once(store, [r["id"] for r in rows])
    assert json.loads(store.get("_SUCCESS.json"))["last_run"]["actors_lost"] >= 1, output
    cluster.workers.append(cluster.cluster.add_node(num_cpus=1, num_gpus=1))  # restore capacity


def test_a_drained_nodes_shards_are_requeued_without_spending_their_attempts(tmp_path, cluster):
    """One attempt per shard: a shard whose attempt were spent by the preemption would be given up (exit 1).
    Enough rows that the run outlasts the notice (`ray drain-node` starts a process) and the node's end."""
    rows = tiny_rows(64)
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    cluster.wait_settled()  # one actor per live GPU node, none on a node another test removed
    driver = subprocess.Popen([*SDBATCH, "submit", str(manifest), "--output", str(out),
                               "--job", demo_job_with(tmp_path, max_shard_attempts=1), "--steps", "20", "--width", "32",
                               "--height", "32", "--shard-size", "2", "--address", cluster.address],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: _both_actors_committed(out), 300, "both actors' first shards", 0.05)
    hosting = cluster.nodes_with_actors()
    assert len(hosting) == 2
    cluster.drain(hosting[0], deadline_s=1)
    time.sleep(1.1)  # past the notice's deadline, as a cloud would take the machine
    cluster.remove(hosting[0], graceful=True)
    output, _ = driver.communicate(timeout=400)
    assert driver.returncode == 0, output
    assert "its node was drained or stopped" in unwrapped(output)
    store = open_store(str(out))
    assert_exactly_once(store, [r["id"] for r in rows])
    last = json.loads(store.get("_SUCCESS.json"))["last_run"]
    assert last["actors_preempted"] == 1 and last["actors_lost"] == 0, output
    cluster.workers.append(cluster.cluster.add_node(num_cpus=1, num_gpus=1))  # restore capacity
