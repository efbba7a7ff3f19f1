"""Ray Jobs: run a job's driver on the cluster so it outlives the laptop; status, logs and cancel by output."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass

from ray.job_submission import JobStatus, JobSubmissionClient

from sdbatch.errors import JobsError, ObjectNotFound
from sdbatch.store.base import Store

RECORD_KEY = "_submit/ray_job.json"
MANIFEST_KEY = "_submit/manifest.parquet"
SPEC_KEY = "_submit/job.json"
ACTIVE = (JobStatus.PENDING, JobStatus.RUNNING)
AGENT_WAIT_SECONDS = 120.0  # how long a freshly started head may take to accept jobs
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)


@dataclass(frozen=True)
class RemoteJob:
    address: str
    submission_id: str
    status: str
    new: bool  # False: the same run was already running (or done) there, nothing was submitted


def _client(address: str) -> JobSubmissionClient:
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # connection and version errors come in many types
        raise JobsError(f"cannot reach the Ray Jobs API at {address} ({type(exc).__name__}); "
                        "check --address (the dashboard URL, port 8265) and that the cluster is up") from exc


def submit(store: Store, address: str, run_fingerprint: str, manifest_path: str, spec_json: str,
           s3_endpoint: str | None) -> RemoteJob:
    """Upload the run's inputs next to its output and submit its driver, unless that run is already active."""
    client = _client(address)
    base = f"sdbatch-{run_fingerprint[:16]}"
    earlier = sorted((j for j in client.list_jobs() if (j.submission_id or "").startswith(base)),
                     key=lambda j: j.start_time or 0)
    for job in earlier:
        if job.status in ACTIVE or job.status == JobStatus.SUCCEEDED:
            return RemoteJob(address, job.submission_id, str(job.status.value), new=False)
    store.upload(manifest_path, MANIFEST_KEY)  # the user's file as it is, streamed
    store.put(SPEC_KEY, spec_json.encode())
    submission_id = base if not earlier else f"{base}-{len(earlier)}"
    entrypoint = _entrypoint(store, s3_endpoint)
    try:
        _submit_when_ready(client, entrypoint, submission_id, store.uri)
    except Exception as exc:
        if "already exists" in str(exc):  # a second submit raced us to the same id: the run is there
            return RemoteJob(address, submission_id, "PENDING", new=False)
        raise JobsError(f"the Ray Jobs API at {address} refused the job: {exc}") from exc
    record = {"address": address, "submission_id": submission_id, "entrypoint": entrypoint,
              "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    store.put(RECORD_KEY, json.dumps(record, indent=2).encode())
    return RemoteJob(address, submission_id, "PENDING", new=True)


def _submit_when_ready(client: JobSubmissionClient, entrypoint: str, submission_id: str, output: str) -> None:
    # A head that has just started answers "No available agent" until its job agent is up.
    deadline = time.monotonic() + AGENT_WAIT_SECONDS
    while True:
        try:
            client.submit_job(entrypoint=entrypoint, submission_id=submission_id, metadata={"sdbatch_output": output})
            return
        except Exception as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def _entrypoint(store: Store, s3_endpoint: str | None) -> str:
    # The cluster's own credentials (instance role, env) are used there: nothing secret goes in here.
    args = ["sdbatch", "submit", store.url_for(MANIFEST_KEY), "--output", store.uri,
            "--job", store.url_for(SPEC_KEY), "--address", "auto"]
    if s3_endpoint:
        args += ["--s3-endpoint", s3_endpoint]
    return shlex.join(args)


def record(store: Store) -> dict:
    try:
        return json.loads(store.get(RECORD_KEY))
    except ObjectNotFound as exc:
        raise JobsError(f"{store.uri} was not submitted through the Ray Jobs API (no {RECORD_KEY})") from exc


def job_status(store: Store, address: str | None = None) -> tuple[str, str]:
    """(submission id, status) of the run's latest Ray Job."""
    rec = record(store)
    client = _client(address or rec["address"])
    return rec["submission_id"], str(client.get_job_status(rec["submission_id"]).value)


def logs(store: Store, address: str | None = None, follow: bool = False,
         write: Callable[[str], None] = print, poll_seconds: float = 1.0) -> str:
    """Print the run's driver log; with follow, keep printing until the job ends. Returns the final status."""
    rec = record(store)
    client = _client(address or rec["address"])
    printed = 0
    while True:
        text = client.get_job_logs(rec["submission_id"])
        if len(text) > printed:
            write(text[printed:].rstrip("\n"))
            printed = len(text)
        status = client.get_job_status(rec["submission_id"])
        if not follow or status in FINISHED:
            return str(status.value)
        time.sleep(poll_seconds)


def cancel(store: Store, address: str | None = None) -> str:
    """Stop the run's Ray Job; the committed shards stay, and the same submit resumes later."""
    rec = record(store)
    client = _client(address or rec["address"])
    client.stop_job(rec["submission_id"])
    return rec["submission_id"]
