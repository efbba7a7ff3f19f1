"""Small helpers shared by tests: writing manifests and running the CLI as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# The repository root (tests/support/util.py is two levels below it).
REPO = Path(__file__).resolve().parents[2]
SDBATCH = [sys.executable, "-m", "sdbatch"]


def write_manifest(path: Path, rows: list[dict] | pa.Table) -> Path:
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    pq.write_table(table, path)
    return path


def tiny_rows(n: int, **extra) -> list[dict]:
    return [{"id": f"r{i:03d}", "prompt": f"a tiny test image number {i}", **extra} for i in range(n)]


def demo_job_with(folder: Path, **run: object) -> str:
    """The demo job file with [run] settings added, written into `folder`."""
    lines = "".join(f"{name} = {json.dumps(value)}\n" for name, value in run.items())
    path = folder / "job.toml"
    path.write_text((REPO / "jobs" / "demo.toml").read_text().replace("[run]\n", f"[run]\n{lines}"))
    return str(path)


def unwrapped(output: str) -> str:
    """Console output with its line wrapping undone: the console breaks lines wherever paths' lengths put them."""
    return " ".join(output.split())


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path | None = None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*SDBATCH, *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd)


def assert_exactly_once(store, ids: list[str]) -> None:
    """The end state every run must reach: one ok result row and one image per id, no orphan
    metadata, and a _SUCCESS.json that agrees."""
    import sdbatch

    results = sdbatch.read_results(store)
    assert sorted(results.column("id").to_pylist()) == sorted(ids)
    assert set(results.column("status").to_pylist()) == {"ok"}
    images = store.list("images/")
    assert sorted(key.rsplit("/", 1)[1].rsplit(".", 1)[0] for key in images) == sorted(ids)
    assert sorted(results.column("image").to_pylist()) == sorted(images)
    assert len(store.list("metadata/")) == len(store.list("_committed/"))  # no orphan metadata
    success = json.loads(store.get("_SUCCESS.json"))
    assert (success["rows_total"], success["rows_ok"], success["rows_failed"]) == (len(ids), len(ids), 0)



def processes_under(pid: int, title: str) -> list:
    """The live descendants of `pid` whose process name is `title` as the kernel keeps it: its first 15
    characters (Ray's "ray::RenderActor" is "ray::RenderActo"). Read from /proc/PID/comm, which asks nothing of
    the process (reading its command line takes a lock on the process's memory)."""
    import psutil

    found = []
    for process in psutil.Process(pid).children(recursive=True):
        try:
            with open(f"/proc/{process.pid}/comm") as comm:
                if comm.read().rstrip("\n") == title[:15]:
                    found.append(process)
        except OSError:  # exited between listing and reading
            pass
    return found
