"""What a finished run leaves for its readers: the compacted results (one pass over the manifest), and for layouts
whose images are files the imagefolder metadata beside them, so `datasets.load_dataset("imagefolder", data_dir=OUTPUT)`
reads the run with its labels."""

from __future__ import annotations

import json
from typing import Any

from sdbatch.output.export.imagefolder import RootMetadata
from sdbatch.output.job import JOB_KEY, run_layout
from sdbatch.output.results import compact
from sdbatch.store.base import Store

# Rows from which compaction runs as Ray tasks. Compacting goes at tens of thousands of rows a second on one
# core, so below this it takes about a minute on the driver, most of which a private Ray's start (seconds, and
# its daemons' memory) would eat; above it the parts spread over every CPU of the machine or cluster.
RAY_COMPACTION_ROWS = 2_000_000


def publish(store: Store, address: str | None = None) -> dict[str, Any]:
    """Compact the results, and where the layout's images are loose files write the imagefolder metadata (a run
    whose every row failed gets none: there is no image to describe). A big run is compacted as Ray tasks on
    the cluster at `address` (or a private local Ray); a small one in one pass here, the metadata in that pass.
    Returns _compacted.json's content."""
    if json.loads(store.get(JOB_KEY))["manifest"]["rows"] >= RAY_COMPACTION_ROWS:
        from sdbatch.engine.compaction import publish_on_cluster  # Ray only for a big run: a small one stays light

        return publish_on_cluster(store, address, run_layout(store).loose_images)
    if not run_layout(store).loose_images:
        return compact(store)
    with RootMetadata(store) as metadata:
        return compact(store, also=metadata.add)
