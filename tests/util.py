"""Small helpers shared by tests: writing manifests and running the CLI as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SDBATCH = [sys.executable, "-m", "sdbatch"]


def write_manifest(path: Path, rows: list[dict] | pa.Table) -> Path:
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    pq.write_table(table, path)
    return path


def tiny_rows(n: int, **extra) -> list[dict]:
    return [{"id": f"r{i:03d}", "prompt": f"a tiny test image number {i}", **extra} for i in range(n)]


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path | None = None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*SDBATCH, *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd)
