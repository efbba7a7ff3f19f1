"""What every export format implements, the settings they share, and what a format reports it wrote."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sdbatch.store.base import Store

if TYPE_CHECKING:
    from sdbatch.output.export.source import Source

# Hugging Face's split names the card and every format use: an export is one split of the run's images.
SPLIT = "train"


@dataclass(frozen=True)
class ExportSettings:
    # The Hub advises data files of a few hundred MB: small enough to upload and stream, few enough to list.
    max_file_bytes: int = 500 * 1000 * 1000
    # None: as many rows per file as max_file_bytes holds at the mean size of the first images read.
    rows_per_file: int | None = None
    # A Parquet row group of ~100 images: the Hub's viewer and streaming readers fetch one group at a time.
    rows_per_group: int = 100
    # Image files per folder (imagefolder): the Hub refuses folders of more than 10,000 files.
    files_per_folder: int = 1000
    # Images read (and, for imagefolder, written) at once: a store's latency, not its bandwidth, bounds a copy.
    threads: int = 8


@dataclass(frozen=True)
class Written:
    """What a format wrote: its data files (keys in the destination), their bytes, and the features of one row
    in the card's YAML form (None: let `datasets` infer them)."""

    files: tuple[str, ...]
    bytes: int
    features: list[dict[str, Any]] | None


class ExportFormat(Protocol):
    """One way to lay out an export; `name` is what `--format` takes."""

    name: str
    data_files: str  # the card's `configs` pattern: the files `datasets` reads as the train split

    def write(self, source: Source, dest: Store, settings: ExportSettings, total: int) -> Written:
        """Write the source's rows (`total` of them in the whole export, counted before) and their images into
        `dest`; a source with a window writes that window's share alone."""

    def merge(self, dest: Store, parts: list[Written]) -> Written:
        """The windows' writes, in order, as one export (what the format keeps in one file is joined here)."""
