"""`sdbatch compact` as a user runs it: the results compacted, and a files output given its imagefolder metadata."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import typer
from typer.testing import CliRunner

from sdbatch.cli import jobs_cmd
from sdbatch.output.results import read_results
from tests.support.image_runs import image_run


def _app() -> typer.Typer:
    app = typer.Typer()
    jobs_cmd.register(app)
    return app


def test_compact_writes_the_parts_and_the_imagefolder_metadata(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    store = image_run(tmp_path / "run", "files")
    result = CliRunner().invoke(_app(), ["compact", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "12 rows in 1 file(s)" in result.output
    assert json.loads(store.get("_compacted.json"))["parts"] == ["results/part-00000.parquet"]
    metadata = pq.read_table(tmp_path / "run" / "metadata.parquet")
    ok = [row["image"] for row in read_results(store).to_pylist() if row["status"] == "ok"]
    assert metadata.column("file_name").to_pylist() == ok and len(ok) == 11
