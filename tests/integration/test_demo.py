"""`sdbatch demo` as `make demo` runs it: the offline demo renders every row on a real local Ray."""

import pyarrow.parquet as pq
import pytest

from sdbatch.store.local import LocalStore
from tests.support.util import assert_exactly_once, run_cli


@pytest.mark.slow
def test_demo_renders_every_row_from_outside_the_checkout(tmp_path, tiny_cache):
    # What `make demo` runs; from another directory, so the job file is found through the package.
    result = run_cli("demo", "--output", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = pq.read_table(tmp_path / "demo-manifest.parquet")
    assert manifest.num_rows == 32 and "32 rendered" in result.stdout
    assert_exactly_once(LocalStore(str(tmp_path / "run")), manifest.column("id").to_pylist())
