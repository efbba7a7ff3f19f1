"""`sdbatch demo` as `make demo` runs it: the offline demo renders every row on a real local Ray."""

import pyarrow.parquet as pq
import pytest

from sdbatch import read_results
from sdbatch.store.local import LocalStore
from tests.support.util import assert_exactly_once, run_cli


@pytest.mark.slow
@pytest.mark.parametrize("family", [None, "flux"])
def test_demo_renders_every_row_from_outside_the_checkout(tmp_path, tiny_cache, family):
    # What `make demo` runs; from another directory, so the job file is found through the package.
    chosen = ("--family", family) if family else ()
    result = run_cli("demo", "--output", str(tmp_path / "run"), *chosen, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = pq.read_table(tmp_path / "demo-manifest.parquet")
    assert manifest.num_rows == 32 and "32 rendered" in result.stdout
    store = LocalStore(str(tmp_path / "run"))
    assert_exactly_once(store, manifest.column("id").to_pylist())
    results = read_results(str(tmp_path / "run"))
    assert set(results.column("family").to_pylist()) == {family or "sd1"}
    assert set(results.column("model").to_pylist()) == {"tiny:flux" if family else "tiny:sd15"}
