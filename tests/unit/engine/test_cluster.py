"""Joining a cluster: an address that answers no connection is refused at once, with the fix, not retried by Ray."""

from __future__ import annotations

import socket

import pytest

from sdbatch.errors import RunStopped

pytest.importorskip("ray")


def test_a_head_node_that_answers_no_connection_is_refused_with_the_fix():
    from sdbatch.engine.cluster import check_reachable

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(RunStopped, match=rf"cannot reach the Ray cluster at 127.0.0.1:{port} .*RAY_ADDRESS"):
            check_reachable(f"127.0.0.1:{port}")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        check_reachable(f"127.0.0.1:{listening.getsockname()[1]}")
    for resolved_by_ray in ("auto", "ray://head:10001", "local"):
        check_reachable(resolved_by_ray)


def test_export_to_a_cluster_that_is_down_stops_with_the_fix(tmp_path):
    from sdbatch.output.results import compact
    from tests.support.image_runs import image_run
    from tests.support.util import run_cli

    compact(image_run(tmp_path / "run", "files"))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
        result = run_cli("export", str(tmp_path / "run"), str(tmp_path / "dest"), "--format", "parquet",
                         "--address", address, timeout=120)
    assert result.returncode != 0 and f"cannot reach the Ray cluster at {address}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "dest" / "README.md").exists()
