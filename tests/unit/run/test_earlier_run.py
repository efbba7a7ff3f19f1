"""A run started by an earlier sdbatch (tests/data/run-0.2.0) is the same run to this version: same fingerprint."""

import shutil

from sdbatch.output.commits import read_markers
from sdbatch.output.job import existing_run
from sdbatch.plan.shards import shards_except
from sdbatch.run.driver import SubmitRequest, prepare
from sdbatch.spec import load_spec
from tests.support.util import REPO

EARLIER = REPO / "tests" / "data" / "run-0.2.0"


def test_a_run_made_by_sdbatch_0_2_0_is_recognised_with_its_one_uncommitted_shard(tmp_path):
    shutil.copytree(EARLIER, tmp_path / "copy")
    copy = tmp_path / "copy"
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    request = SubmitRequest(str(copy / "manifest.parquet"), str(copy / "run"), load_spec(copy / "job.toml"))
    with prepare(request) as prepared:
        assert existing_run(prepared.store, prepared.job_doc)  # a RunMismatch would name what differs
        done = read_markers(prepared.store, len(prepared.plan.shards))
        pending = shards_except(prepared.plan.shards, done.column("shard"))
    assert [shard.shard_id for shard in pending] == ["000000"]
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before  # preparing wrote nothing
