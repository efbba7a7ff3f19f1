"""A finished run's compaction as Ray tasks, one per part (results.compact_part), the driver holding refs only;
then its imagefolder metadata as a task of its own."""

from __future__ import annotations

from typing import Any

import ray
from ray.exceptions import RayError

from sdbatch.errors import RunStopped
from sdbatch.output.export.imagefolder import write_root_metadata
from sdbatch.output.results import compact_part, compaction_parts, finished_run, write_compacted
from sdbatch.output.scores import ScoreJoin
from sdbatch.store.base import Store

# Parts in flight per CPU of the cluster: one computing, one waiting on the store, so a CPU never idles
# on I/O; more would only hold finished keys and queued tasks.
IN_FLIGHT_PER_CPU = 2

# One retry: a part that fails twice has a cause a third try would not pass (a corrupt file).
_compact_part = ray.remote(num_cpus=1, max_retries=1, retry_exceptions=True)(compact_part)
_write_metadata = ray.remote(num_cpus=1, max_retries=1, retry_exceptions=True)(write_root_metadata)


def compact_on_ray(store: Store, tasks: int | None = None) -> dict[str, Any]:
    """compact(store) with its parts as Ray tasks (Ray connected by the caller: engine/cluster.connect), at
    most `tasks` in flight (default: IN_FLIGHT_PER_CPU per CPU of the cluster). Writes _compacted.json once
    every part is written; a part failing twice raises RunStopped and leaves no _compacted.json."""
    job, markers = finished_run(store)
    parts = compaction_parts(store)
    # Put once: every task reads the same markers and score listing instead of listing the store itself.
    # The columns the join reads: the object every task gets stays small at millions of shards.
    shared = ray.put(markers.select(["shard", "metadata", "rows"])), ray.put(ScoreJoin(store))
    limit = max(1, tasks or IN_FLIGHT_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
    keys: dict[int, str | None] = {}
    pending: dict[Any, int] = {}
    todo = iter(enumerate(parts))
    try:
        while len(keys) < len(parts):
            for index, groups in todo:
                pending[_compact_part.remote(store, groups, index, *shared)] = index
                if len(pending) >= limit:
                    break
            [ref], _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ref)
            keys[index] = _get(ref, store, index, parts[index])
    finally:
        for ref in pending:  # a part failed: the others' work is no use without _compacted.json
            ray.cancel(ref)
    return write_compacted(store, job, [keys[index] for index in range(len(parts))])


def publish_on_cluster(store: Store, address: str | None, metadata: bool) -> dict[str, Any]:
    """compact_on_ray, then (`metadata`: a layout whose images are files) the imagefolder metadata as one Ray task:
    it is one file at the output's root, as `datasets` reads it, written in one streaming pass, off the driver.
    On the cluster at `address`, or a private local Ray started for it and shut down after; a Ray this process
    is already connected to (a script's, a test's) is used as it is and left connected."""
    if ray.is_initialized():
        return _publish(store, metadata)
    from sdbatch.engine import cluster  # its actor module loads torch: not for a caller already connected

    cluster.connect(address)
    try:
        return _publish(store, metadata)
    finally:
        cluster.shutdown()


def _publish(store: Store, metadata: bool) -> dict[str, Any]:
    doc = compact_on_ray(store)
    if metadata:
        ref = _write_metadata.remote(store)
        try:
            ray.get(ref)
        except RayError as exc:
            raise RunStopped(f"writing the imagefolder metadata of {store.uri} failed: {_why(exc)}; the results "
                             "are compacted; run `sdbatch compact` on the output to write it again") from exc
    return doc


def _get(ref: Any, store: Store, index: int, groups: tuple[int, int]) -> str | None:
    try:
        return ray.get(ref)
    except RayError as exc:
        raise RunStopped(f"compacting {store.uri} failed twice on part {index} (manifest row groups "
                         f"{groups[0]} to {groups[1] - 1}): {_why(exc)}. No _compacted.json "
                         "was written, so readers see the committed shards as before; fix the cause, then run "
                         "`sdbatch compact` on the output") from exc


def _why(exc: RayError) -> str:
    cause = getattr(exc, "cause", None) or exc
    return f"{type(cause).__name__}: {str(cause).rstrip('.')}"
