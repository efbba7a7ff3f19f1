"""An export (output/export/windows.py) as Ray tasks: a task per compacted part counts the rows it keeps, a task per
window writes that window's data files, one joins them; the driver plans and writes the card, holding counts and
refs only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyarrow.compute as pc

from sdbatch.engine.tasks import TaskFailed, in_flight_limit, on_cluster, remote, run_all
from sdbatch.errors import RunStopped
from sdbatch.output.export import ExportSettings, ExportSummary
from sdbatch.output.export.windows import count_part, export_in_windows, merge_written, write_window
from sdbatch.store.base import Store

_TASKS = {function: remote(function) for function in (count_part, write_window, merge_written)}


def export_on_cluster(store: Store, dest: Store, format: str, where: pc.Expression | None = None,
                      rows_per_file: int | None = None, settings: ExportSettings | None = None,
                      address: str | None = None, tasks: int | None = None) -> ExportSummary:
    """export_in_windows with its calls as Ray tasks (Ray as tasks.on_cluster gives it), at most `tasks` in
    flight. A task failing twice raises RunStopped and leaves no card: the export is not whole."""

    def on_ray(function: Callable, calls: Sequence[tuple], doing: str, names: Sequence[str]) -> list[Any]:
        try:
            return run_all(_TASKS[function], calls, tasks)
        except TaskFailed as failed:
            raise RunStopped(f"exporting {store.uri}: {doing} {names[failed.index]} failed twice: {failed.why}. "
                             "The export has no card (README.md) and is not whole; fix the cause, empty the "
                             "destination and export again") from failed

    with on_cluster(address):
        return export_in_windows(store, dest, format, where, rows_per_file, settings, on_ray, in_flight_limit(tasks))
