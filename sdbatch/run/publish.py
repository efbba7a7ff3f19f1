"""A finished output made easy to read: its results compacted, and where its images are loose files the
imagefolder metadata beside them, so `datasets.load_dataset("imagefolder", data_dir=OUTPUT)` has every column."""

from __future__ import annotations

from sdbatch.output.export import write_imagefolder_metadata
from sdbatch.output.job import run_layout
from sdbatch.output.results import compact
from sdbatch.store.base import Store


def publish(store: Store) -> None:
    """Compact the results, then (files-like layouts) write the metadata from the compacted files."""
    compact(store)
    if run_layout(store).loose_images:
        write_imagefolder_metadata(store)
