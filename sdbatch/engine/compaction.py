"""A finished run's compaction as Ray tasks, one per part (results.compact_part), the driver holding refs only;
then its imagefolder metadata as a task of its own."""

from __future__ import annotations

from typing import Any

import ray

from sdbatch.engine.tasks import TaskFailed, get_one, on_cluster, remote, run_all
from sdbatch.errors import RunStopped
from sdbatch.output.export.imagefolder import write_root_metadata
from sdbatch.output.results import compact_part, compaction_parts, finished_run, write_compacted
from sdbatch.output.scores import ScoreJoin
from sdbatch.store.base import Store

_compact_part = remote(compact_part)
_write_metadata = remote(write_root_metadata)


def compact_on_ray(store: Store, tasks: int | None = None) -> dict[str, Any]:
    """compact(store) with its parts as Ray tasks (Ray connected by the caller: engine/cluster.connect), at
    most `tasks` in flight (default: tasks.in_flight_limit). Writes _compacted.json once every part is
    written; a part failing twice raises RunStopped and leaves no _compacted.json."""
    job, markers = finished_run(store)
    parts = compaction_parts(store)
    # Put once: every task reads the same markers and score listing instead of listing the store itself.
    # The columns the join reads: the object every task gets stays small at millions of shards.
    shared = ray.put(markers.select(["shard", "metadata", "rows"])), ray.put(ScoreJoin(store))
    try:
        keys = run_all(_compact_part, [(store, groups, index, *shared) for index, groups in enumerate(parts)], tasks)
    except TaskFailed as failed:
        groups = parts[failed.index]
        raise RunStopped(f"compacting {store.uri} failed twice on part {failed.index} (manifest row groups "
                         f"{groups[0]} to {groups[1] - 1}): {failed.why}. No _compacted.json "
                         "was written, so readers see the committed shards as before; fix the cause, then run "
                         "`sdbatch compact` on the output") from failed
    return write_compacted(store, job, keys)


def publish_on_cluster(store: Store, address: str | None, metadata: bool) -> dict[str, Any]:
    """compact_on_ray, then (`metadata`: a layout whose images are files) the imagefolder metadata as one Ray task:
    it is one file at the output's root, as `datasets` reads it, written in one streaming pass, off the driver.
    Ray: as tasks.on_cluster gives it."""
    with on_cluster(address):
        return _publish(store, metadata)


def _publish(store: Store, metadata: bool) -> dict[str, Any]:
    doc = compact_on_ray(store)
    if metadata:
        try:
            get_one(_write_metadata.remote(store))
        except TaskFailed as failed:
            raise RunStopped(f"writing the imagefolder metadata of {store.uri} failed: {failed.why}; the results "
                             "are compacted; run `sdbatch compact` on the output to write it again") from failed
    return doc
