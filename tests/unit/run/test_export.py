"""Where an export runs: in this process for a small or uncompacted run, as Ray tasks for a big compacted one or
when a cluster is named."""

from __future__ import annotations

import pytest

from sdbatch.output.results import compact
from sdbatch.run import export as run_export
from sdbatch.store.local import LocalStore
from tests.support.image_runs import image_run

pytest.importorskip("ray")


@pytest.fixture
def on_cluster(monkeypatch):
    from sdbatch.engine import export as engine_export

    calls = []
    monkeypatch.setattr(engine_export, "export_on_cluster", lambda *args, **kwargs: calls.append(kwargs) or "ray")
    return calls


def test_a_big_compacted_run_or_a_named_cluster_exports_on_ray(tmp_path, monkeypatch, on_cluster):
    store = image_run(tmp_path / "run", "files")
    compact(store)
    monkeypatch.setattr(run_export, "RAY_EXPORT_ROWS", 12)  # the run's rows
    assert run_export.export_output(store, LocalStore(str(tmp_path / "a")), "parquet") == "ray"
    monkeypatch.setattr(run_export, "RAY_EXPORT_ROWS", 13)
    assert run_export.export_output(store, LocalStore(str(tmp_path / "b")), "parquet", address="auto") == "ray"
    assert [call["address"] for call in on_cluster] == [None, "auto"]
    summary = run_export.export_output(store, LocalStore(str(tmp_path / "c")), "parquet")
    assert summary.rows == 11 and len(on_cluster) == 2


def test_a_run_not_compacted_is_exported_here_even_with_a_cluster(tmp_path, monkeypatch, on_cluster):
    store = image_run(tmp_path / "run", "files")
    monkeypatch.setattr(run_export, "RAY_EXPORT_ROWS", 1)
    summary = run_export.export_output(store, LocalStore(str(tmp_path / "dest")), "parquet", address="auto")
    assert summary.rows == 11 and not on_cluster
