"""An export cut into windows of whole data files: what each compacted part keeps (a call per part), the windows
over those rows, a window's write (a call per window), then the windows joined and the card. Each call's work is
a plain function: a loop runs them here, engine/export.py as Ray tasks."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from sdbatch.errors import UsageError
from sdbatch.output.export import ExportSettings, ExportSummary, check_rows, finish, prepared
from sdbatch.output.export.card import Stats
from sdbatch.output.export.files import planned_rows
from sdbatch.output.export.protocol import ExportFormat, Written
from sdbatch.output.export.source import Source, Window, unfiltered
from sdbatch.output.results import COMPACTED_KEY
from sdbatch.store.base import Store
from sdbatch.store.ranged import StoreFile

# Runs function(*call) for every call, the results in order; `doing` and `names` say what failed, if one does.
Mapper = Callable[[Callable, Sequence[tuple], str, Sequence[str]], list[Any]]

# Kept rows a window aims at: a compacted part's worth, so a window reads about one part (two where it
# straddles) and the parts' reads are not repeated for every small data file.
WINDOW_ROWS = 1 << 18


@dataclass(frozen=True)
class PartCount:
    """What one compacted part holds for an export: rows kept, and the committed rows left out and why."""

    key: str
    kept: int
    seen: int
    failed: int
    filtered: int


@dataclass(frozen=True)
class WindowWrite:
    """What a window's task wrote, and what the card needs of its rows."""

    written: Written
    stats: Stats
    images_missing: int


def count_part(store: Store, key: str, where: pc.Expression | None) -> PartCount:
    """Counted by Arrow's scanner over the part read by range: only the columns `status` and the filter name are
    read, and row groups whose statistics rule the filter out are skipped."""
    with StoreFile(store, key) as file:
        fragment = ds.ParquetFileFormat().make_fragment(pa.PythonFile(file, mode="r"))
        ok = pc.field("status") == "ok"
        seen, good = fragment.count_rows(), fragment.count_rows(filter=ok)
        kept = good
        if where is not None:
            with unfiltered(where, store, fragment.physical_schema.names):
                kept = fragment.count_rows(filter=ok & where)
    return PartCount(key, kept, seen, seen - good, good - kept)


def window_rows(per_file: int, settings: ExportSettings, total: int = 0, spread: int = 1) -> int:
    """Rows per window: whole data files and whole row groups (a window starts where a file and a chunk do),
    about WINDOW_ROWS of them, fewer where that gives fewer than `spread` windows of the `total` rows (a filter
    that keeps few rows still keeps every worker busy)."""
    unit = math.lcm(per_file, settings.rows_per_group)
    rows = max(1, WINDOW_ROWS // unit) * unit
    if total and spread > 1:
        rows = min(rows, max(unit, math.ceil(total / spread / unit) * unit))
    return rows


def plan_windows(counts: list[PartCount], rows: int) -> list[Window]:
    """The kept rows, numbered over the parts in order, in windows of `rows`, each with the parts it reads."""
    starts, before = [], 0
    for count in counts:
        starts.append(before)
        before += count.kept
    windows = []
    for index, start in enumerate(range(0, before, rows)):
        stop = min(start + rows, before)
        parts = tuple((count.key, first) for count, first in zip(counts, starts)
                      if count.kept and first < stop and first + count.kept > start)
        windows.append(Window(index, start, stop, parts))
    return windows


def write_window(store: Store, dest: Store, chosen: ExportFormat, where: pc.Expression | None, window: Window,
                 settings: ExportSettings, total: int) -> WindowWrite:
    """The window's rows and images written as `chosen` lays them out (settings.rows_per_file set: every window
    must cut files alike)."""
    stats = Stats()
    source = Source(store, where, on_chunk=stats.add, window=window)
    written = chosen.write(source, dest, settings, total)
    return WindowWrite(written, stats, source.images_missing)


def merge_written(chosen: ExportFormat, dest: Store, parts: list[Written]) -> Written:
    return chosen.merge(dest, parts)


def export_in_windows(store: Store, dest: Store, format: str, where: pc.Expression | None = None,
                      rows_per_file: int | None = None, settings: ExportSettings | None = None,
                      mapper: Mapper | None = None, spread: int = 1) -> ExportSummary:
    """output.export.export of a compacted run, its parts counted and its windows written by `mapper`'s calls
    (default: a loop here), at least `spread` windows where the rows allow (the calls run at once); the same
    files, rows and card."""
    mapper = mapper or _loop
    chosen, settings = prepared(store, dest, format, rows_per_file, settings)
    if not store.exists(COMPACTED_KEY):
        raise UsageError(f"{store.uri} is not compacted; run `sdbatch compact` on it first (a finished run is "
                         "compacted when it ends), or export it in one process")
    parts = json.loads(store.get(COMPACTED_KEY))["parts"]
    counts: list[PartCount] = mapper(count_part, [(store, key, where) for key in parts], "counting", parts)
    source = _counted(Source(store, where), counts)
    total = sum(count.kept for count in counts)
    check_rows(source, total)
    # Fixed before the windows are cut: every window's files must be cut alike.
    settings = dataclasses.replace(settings, rows_per_file=settings.rows_per_file or _sized(store, where, settings))
    windows = plan_windows(counts, window_rows(settings.rows_per_file, settings, total, spread))
    calls = [(store, dest, chosen, where, window, settings, total) for window in windows]
    writes: list[WindowWrite] = mapper(write_window, calls, "writing",
                                       [f"rows {window.start} to {window.stop - 1}" for window in windows])
    stats = Stats()
    for write in writes:
        stats.merge(write.stats)
    source.images_missing = sum(write.images_missing for write in writes)
    [written] = mapper(merge_written, [(chosen, dest, [write.written for write in writes])], "joining",
                       ["the windows' files"])
    return finish(dest, chosen, source, stats, written)


def _loop(function: Callable, calls: Sequence[tuple], doing: str, names: Sequence[str]) -> list[Any]:
    return [function(*call) for call in calls]


def _counted(source: Source, counts: list[PartCount]) -> Source:
    """The card's source, with the counts the parts' calls made."""
    source.rows_seen = sum(count.seen for count in counts)
    source.rows_failed = sum(count.failed for count in counts)
    source.rows_filtered = sum(count.filtered for count in counts)
    return source


def _sized(store: Store, where: pc.Expression | None, settings: ExportSettings) -> int:
    """Rows per data file, from the first kept rows' images (as a single-process export sizes them)."""
    first = next(Source(store, where).samples(settings.rows_per_group, settings.threads))
    return planned_rows(first, settings)
