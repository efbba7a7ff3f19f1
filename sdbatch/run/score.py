"""Scores for an output's committed shards that a step has not scored yet: `sdbatch score`, and a run's end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow.compute as pc

from sdbatch.errors import UsageError
from sdbatch.output.commits import read_markers
from sdbatch.output.job import JOB_KEY
from sdbatch.output.results import COMPACTED_KEY, scan_shards
from sdbatch.output.scores import unscored
from sdbatch.run.publish import publish
from sdbatch.settings import RunSettings, S3Settings, ScoreSettings
from sdbatch.store.base import Store

# What a score step reads of a row: its image and its prompt as written.
ROW_FIELDS = ("id", "image", "prompt", "prompt_syntax")


@dataclass
class ScoreSummary:
    shards_committed: int
    shards_to_score: int  # committed shards missing a file of at least one step
    written: dict[str, int] = field(default_factory=dict)  # step -> files written
    failed: dict[str, str] = field(default_factory=dict)  # shard -> why


def score_output(store: Store, settings: ScoreSettings, s3: S3Settings | None = None, address: str | None = None,
                 actors: int | None = None, device: str = "auto", on_done=None,
                 limits: RunSettings | None = None) -> ScoreSummary:
    """Score every committed shard that lacks a step's file, from its stored images; then compact again if the
    output was compacted, so its compacted results carry the new columns. Resumable: files stand once written."""
    if not store.exists(JOB_KEY):
        raise UsageError(f"{store.uri} holds no sdbatch run (no {JOB_KEY}); give the --output of a submit")
    job = json.loads(store.get(JOB_KEY))
    markers = read_markers(store)
    attempts = dict(zip(markers.column("shard").to_pylist(), markers.column("attempt").to_pylist()))
    todo = unscored(store, tuple(settings.steps), sorted(attempts))
    summary = ScoreSummary(len(attempts), len(todo))
    if not todo:
        return summary
    from sdbatch.engine.scoring import ScoreWork, score_shards  # Ray and torch only once there is work

    def work() -> Iterator[ScoreWork]:
        for shard, rows in _rows_by_shard(store, list(todo)):
            yield ScoreWork(shard, attempts[shard], tuple(rows), todo[shard])

    report = score_shards(work(), store, settings, job["spec"]["output"]["layout"], s3, address, actors, device,
                          on_done, limits)
    summary.written, summary.failed = report.written, report.failed
    if report.written and store.exists(COMPACTED_KEY):
        publish(store, address)
    return summary


def _rows_by_shard(store: Store, shards: list[str]) -> Iterator[tuple[str, list[dict]]]:
    """Each shard's ok rows, as the planned order brings them (a shard's rows are contiguous); a shard with none
    (every row failed) too, so that its empty score files say it was scored."""
    current, rows, seen = None, [], set()
    for batch in scan_shards(store, shards):
        picked = batch.select([name for name in (*ROW_FIELDS, "shard", "status") if name in batch.column_names])
        for row in picked.filter(pc.equal(picked.column("status"), "ok")).to_pylist():
            if row["shard"] != current:
                if current is not None:
                    yield current, rows
                current, rows = row["shard"], []
                seen.add(current)
            rows.append({name: row.get(name) for name in ROW_FIELDS})
    if current is not None:
        yield current, rows
    for shard in shards:
        if shard not in seen:
            yield shard, []
