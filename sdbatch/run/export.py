"""Where an export runs: in this process for a small run, as Ray tasks (engine/export.py) for a big compacted one
or whenever a cluster is named; the same files and card either way."""

from __future__ import annotations

import json

import pyarrow.compute as pc

from sdbatch.output.export import ExportSummary, export
from sdbatch.output.job import JOB_KEY
from sdbatch.output.results import COMPACTED_KEY
from sdbatch.store.base import Store

# Rows from which a compacted run is exported as Ray tasks without a cluster being named. An export copies every
# image, so even a small run's takes minutes in one process, against the seconds a private Ray takes to start.
RAY_EXPORT_ROWS = 100_000


def export_output(store: Store, dest: Store, format: str, where: pc.Expression | None = None,
                  rows_per_file: int | None = None, address: str | None = None) -> ExportSummary:
    """export(...) here, or export_on_cluster on the cluster at `address` (a private local Ray when None and the
    run is big). A run not compacted (still rendering, or stopped) is exported here: its parts are not there."""
    if store.exists(COMPACTED_KEY) and (address or _rows(store) >= RAY_EXPORT_ROWS):
        from sdbatch.engine.export import export_on_cluster  # Ray only for the tasks: a small export stays light

        return export_on_cluster(store, dest, format, where, rows_per_file, address=address)
    return export(store, dest, format, where, rows_per_file)


def _rows(store: Store) -> int:
    return int(json.loads(store.get(JOB_KEY))["manifest"]["rows"])
