"""A finished output made easy to read: its results compacted, and where its images are loose files the
imagefolder metadata beside them, so `datasets.load_dataset("imagefolder", data_dir=OUTPUT)` has every column."""

from __future__ import annotations

from sdbatch.output.export.imagefolder import RootMetadata
from sdbatch.output.job import run_layout
from sdbatch.output.results import compact
from sdbatch.store.base import Store


def publish(store: Store) -> None:
    """Compact the results; where the layout's images are loose files, write the imagefolder metadata in the same
    pass (a run whose every row failed gets none: there is no image to describe)."""
    if not run_layout(store).loose_images:
        compact(store)
        return
    with RootMetadata(store) as metadata:
        compact(store, also=metadata.add)
