"""The output protocol's identity checks: a rerun into an output that holds another run is refused with why."""

import json

import pytest

from sdbatch.errors import RunMismatch
from sdbatch.output.job import JOB_KEY, RunIdentity, existing_run, job_document
from sdbatch.spec import JobSpec
from sdbatch.store.local import LocalStore


def test_a_run_started_by_another_sdbatch_version_is_refused_with_the_version_named(tmp_path):
    store = LocalStore(str(tmp_path))
    old = {**job_document(JobSpec(), RunIdentity("m1", {"defaults": {"seed": 0}}), "a.parquet", 1, 1),
           "sdbatch_version": "0.0.9"}
    store.put(JOB_KEY, json.dumps(old).encode())
    new = job_document(JobSpec(), RunIdentity("m2", {"defaults": {"seed": 0, "clip_skip": 1}}), "a.parquet", 1, 1)
    with pytest.raises(RunMismatch, match=r"started by sdbatch 0\.0\.9, this is .*resume it with sdbatch 0\.0\.9"):
        existing_run(store, new)
    same_version = {**old, "sdbatch_version": new["sdbatch_version"]}
    store.put(JOB_KEY, json.dumps(same_version).encode())
    with pytest.raises(RunMismatch) as refused:
        existing_run(store, new)
    assert "started by" not in str(refused.value) and "defaults.clip_skip was None, now 1" in str(refused.value)
    assert existing_run(store, same_version)
