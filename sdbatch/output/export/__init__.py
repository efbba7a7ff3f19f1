"""A run's ok images and rows as a Hugging Face dataset (parquet, imagefolder or webdataset) with a dataset card.

A format is a module with a class implementing protocol.ExportFormat, and a line in FORMATS."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pyarrow.compute as pc

from sdbatch.errors import UsageError
from sdbatch.output.export.card import CARD_KEY, Stats, dataset_card
from sdbatch.output.export.imagefolder import ImagefolderFormat, write_imagefolder_metadata
from sdbatch.output.export.parquet import ParquetFormat
from sdbatch.output.export.protocol import SPLIT, ExportFormat, ExportSettings, Written
from sdbatch.output.export.source import IMAGE_REF, Source
from sdbatch.output.export.webdataset import WebdatasetFormat
from sdbatch.store.base import Store

__all__ = ["FORMATS", "IMAGE_REF", "ExportSettings", "ExportSummary", "check_rows", "export", "finish",
           "format_named", "prepared", "write_imagefolder_metadata"]

FORMATS: dict[str, ExportFormat] = {f.name: f for f in (ParquetFormat(), ImagefolderFormat(), WebdatasetFormat())}
# What an earlier export leaves in a destination: its card, or a format's data folder.
EXPORT_MARKS = (CARD_KEY, "data/", f"{SPLIT}/")


@dataclass(frozen=True)
class ExportSummary:
    format: str
    dest: str
    rows: int  # exported: each an image and its row
    rows_seen: int  # the run's committed rows
    rows_failed: int  # failed in the run, never exported
    rows_filtered: int  # ok, left out by `where`
    images_missing: int  # ok and kept, but the image is not in the output (deleted since)
    files: tuple[str, ...]  # the data files (imagefolder: its metadata file; the images are one per row)
    bytes: int  # of the data files
    card: str  # the dataset card's key


def format_named(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise UsageError(f"export format {name!r} is unknown; use one of {', '.join(FORMATS)}")
    return FORMATS[name]


def export(store: Store, dest: Store, format: str, where: pc.Expression | None = None,
           rows_per_file: int | None = None, settings: ExportSettings | None = None) -> ExportSummary:
    """Copy the run's ok rows that pass `where` (an expression over read_results' columns) with their images into
    `dest` as `format`, then its dataset card, in this process (engine/export.py spreads it over Ray tasks).
    Refused: an unknown format, an output without a run, a destination that holds an export already, no row to
    export."""
    chosen, settings = prepared(store, dest, format, rows_per_file, settings)
    stats = Stats()
    source = Source(store, where, on_chunk=stats.add)
    total = source.count()  # the data files' count is in their names, so it is known before the first is named
    check_rows(source, total)
    written = chosen.write(source, dest, settings, total)
    return finish(dest, chosen, source, stats, written)


def prepared(store: Store, dest: Store, format: str, rows_per_file: int | None,
             settings: ExportSettings | None) -> tuple[ExportFormat, ExportSettings]:
    """The format and settings of an export into `dest`, once both are known to be usable."""
    chosen = format_named(format)
    settings = settings or ExportSettings()
    if rows_per_file is not None:
        if rows_per_file < 1:
            raise UsageError(f"rows per file {rows_per_file}: use 1 or more")
        settings = dataclasses.replace(settings, rows_per_file=rows_per_file)
    Source(store)  # an output without a run is refused before the destination is looked at
    _check_dest(store, dest)
    return chosen, settings


def check_rows(source: Source, total: int) -> None:
    if not total:
        raise UsageError(f"no row of {source.store.uri} can be exported: {source.rows_seen} committed, "
                         f"{source.rows_failed} failed, {source.rows_filtered} left out by the filter; "
                         "loosen the filter, or export once the run has committed ok images")


def finish(dest: Store, chosen: ExportFormat, source: Source, stats: Stats, written: Written) -> ExportSummary:
    """Write the dataset card (the last file: an export with a card is whole) and say what was exported."""
    dest.put(CARD_KEY, dataset_card(stats, source, chosen.name, chosen.data_files, written).encode())
    return ExportSummary(chosen.name, dest.uri, stats.rows, source.rows_seen, source.rows_failed,
                         source.rows_filtered, source.images_missing, written.files, written.bytes, CARD_KEY)


def _check_dest(store: Store, dest: Store) -> None:
    if dest.uri.rstrip("/") == store.uri.rstrip("/"):
        raise UsageError(f"the destination {dest.uri} is the run's output itself; export into another folder "
                         "or prefix")
    found = [mark for mark in EXPORT_MARKS if (dest.list(mark) if mark.endswith("/") else dest.exists(mark))]
    if found:
        raise UsageError(f"{dest.uri} already holds an export ({', '.join(found)}); export into an empty folder "
                         "or prefix, or delete that one first")
    dest.check_writable()
