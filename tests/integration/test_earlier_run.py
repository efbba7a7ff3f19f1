"""A run that an earlier sdbatch started and did not finish (tests/data/run-0.2.0) resumes with this version."""

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import sdbatch
from tests.support.util import REPO, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_cache")]
EARLIER = REPO / "tests" / "data" / "run-0.2.0"


def test_a_run_sdbatch_0_2_0_left_unfinished_resumes_adopting_its_images_and_renders_the_same_missing_one(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(EARLIER, copy)
    job_before = (copy / "run" / "job.json").read_bytes()
    done = run_cli("submit", "manifest.parquet", "--output", "run", "--job", "job.toml", cwd=copy)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (copy / "run" / "job.json").read_bytes() == job_before  # the same run: job.json stands as created
    success = json.loads((copy / "run" / "_SUCCESS.json").read_text())
    assert (success["rows_total"], success["rows_ok"], success["rows_failed"]) == (7, 7, 0)
    last = success["last_run"]
    assert (last["shards_skipped"], last["rows_adopted"], last["rows_rendered"]) == (3, 2, 1)
    results = sdbatch.read_results(str(copy / "run"))
    assert sorted(results.column("id").to_pylist()) == [f"r{n:03d}" for n in range(7)]
    assert results.column("label").to_pylist().count("sea") == 3
    again = np.asarray(Image.open(io.BytesIO((copy / "run" / "images" / "000000" / "r004.png").read_bytes())))
    earlier = np.asarray(Image.open(EARLIER / "r004.png"))
    assert np.abs(again.astype(int) - earlier.astype(int)).max() <= 2  # the same row renders the same image
