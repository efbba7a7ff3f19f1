"""The driver: manifest -> plan -> output store -> engine -> summary. Everything is checked before Ray starts."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.errors import UsageError, UserFacing
from sdbatch.manifest import paths
from sdbatch.manifest.models import check_local_references, check_step_cache
from sdbatch.manifest.problems import shown
from sdbatch.output.commits import MARKER_SCHEMA, MarkerIndex, read_markers
from sdbatch.output.heartbeat import Heartbeat
from sdbatch.output.job import (
    RunIdentity,
    claim_output,
    existing_run,
    job_document,
    new_attempt_id,
    run_counts,
    write_success,
)
from sdbatch.output.layouts import layout_named
from sdbatch.output.results import COMPACTED_KEY, scan_results
from sdbatch.plan.planned import PlannedManifest, PlannedRows, plan_manifest
from sdbatch.plan.shards import Plan, Shard, shards_except
from sdbatch.run.publish import publish
from sdbatch.scores import STEP_INFO
from sdbatch.settings import S3Settings
from sdbatch.spec import JobSpec
from sdbatch.store import is_remote_store, open_store
from sdbatch.store.base import Store
from sdbatch.tasks import ShardTask

MAX_LISTED_FAILURES = 1000
# Weight files a score model may be given as.
WEIGHT_FILES = (".pth", ".pt", ".safetensors", ".bin")


@dataclass(frozen=True)
class SubmitRequest:
    manifest: str
    output: str
    spec: JobSpec
    # None: a private local Ray for this run; else a running cluster (ray://, host:port, "auto").
    address: str | None = None
    s3: S3Settings = field(default_factory=S3Settings)
    # For Ray Jobs: the endpoint as the cluster reaches it (None: same as s3; "": the cluster's own env).
    cluster_s3_endpoint: str | None = None


@dataclass(frozen=True)
class PreparedRun:
    """A checked and planned run; its working folder (the planned manifest) goes with close()."""

    request: SubmitRequest
    planned: PlannedManifest
    store: Store
    job_doc: dict
    workdir: str

    @property
    def plan(self) -> Plan:
        return self.planned.plan

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PreparedRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class RunSummary:
    output: str
    counts: dict[str, Any]
    failures: list[dict[str, str]]
    gave_up: dict[str, str]
    stats: dict[str, Any]

    @property
    def complete(self) -> bool:
        return self.counts["shards_done"] == self.counts["shards_total"] and not self.counts.get("shards_unscored")

    @property
    def exit_code(self) -> int:
        return 0 if self.complete and self.counts["rows_failed"] == 0 else 1


def prepare(request: SubmitRequest) -> PreparedRun:
    """Validate the manifest and the store and plan the run, a chunk of the manifest at a time; writes
    nothing to the output (the planned manifest goes to a local working folder)."""
    _check_remote_output(request)
    spec = request.spec
    layout_named(spec.output.layout)  # an unknown layout is refused before the manifest is read
    _check_score_models(spec, request.address)
    workdir = tempfile.mkdtemp(prefix="sdbatch-run-")
    try:
        planned = plan_manifest(request.manifest, spec.defaults, spec.output.shard_size, workdir, request.s3,
                                check=lambda chunk, first_row: _check_chunk(request, chunk, first_row))
        identity = RunIdentity(planned.fingerprint, spec.identity())
        job_doc = job_document(spec, identity, request.manifest, planned.plan.rows_total, len(planned.plan.shards))
        store = open_store(request.output, request.s3)
        store.check_writable()
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return PreparedRun(request, planned, store, job_doc, workdir)


def _check_score_models(spec: JobSpec, address: str | None) -> None:
    """A score model given as a local file or folder that is not there is refused now, not after the render."""
    if address is not None:
        return  # the cluster's machines have their own disks
    for step in spec.score.steps:
        for name in STEP_INFO[step].needs:
            value = getattr(spec.score, name)
            local = not is_remote_store(value) and (value.startswith(("/", ".", "~")) or value.endswith(WEIGHT_FILES))
            if local and not paths.exists(paths.local_path(value)):
                why = paths.path_problem(value) or "names no file or folder here"
                raise UsageError(f"job setting score.{name} = {shown(value)} {why}; give the {step} step's model as "
                                 "a path that exists here, an s3:// URI or a hub id")


def _check_chunk(request: SubmitRequest, chunk: pa.Table, first_row: int) -> None:
    if request.address is None:
        check_local_references(chunk)  # the actors share this machine's disk
    check_step_cache(chunk, request.spec.render.step_cache, first_row)
    layout_named(request.spec.output.layout).check_ids(chunk.column("id"), first_row)


# A Ray dashboard's URL: Ray addresses, not storage, so the storage schemes do not decide them.
JOBS_ADDRESS = re.compile(r"^https?://")


def is_jobs_address(address: str | None) -> bool:
    """A dashboard URL means Ray Jobs submission; anything else (auto, host:port) runs the driver here."""
    return bool(address and JOBS_ADDRESS.match(address))


def _check_remote_output(request: SubmitRequest) -> None:
    if is_jobs_address(request.address) and not is_remote_store(request.output):
        raise UsageError(f"--output {request.output} is a local path, but the run goes to the cluster at "
                         f"{request.address}, whose machines cannot write to this one's disk; "
                         "use --output s3://bucket/prefix")


def execute(prepared: PreparedRun, events_factory) -> RunSummary:
    """Render the shards not yet committed and write _SUCCESS.json when all are.

    job.json is written only once the actors have loaded the model: a run that cannot start
    leaves the output untouched, so fixing a flag and rerunning is not refused as another run.
    """
    started = time.monotonic()
    store = prepared.store
    shards_total = len(prepared.plan.shards)
    done = (read_markers(store, shards_total, refresh=True) if existing_run(store, prepared.job_doc)
            else MARKER_SCHEMA.empty_table())
    pending = shards_except(prepared.plan.shards, done.column("shard"))
    rows_done = pc.sum(done.column("rows")).as_py() or 0

    heartbeat = Heartbeat(store, prepared.request.spec.run.heartbeat_seconds, shards_total, done.num_rows)

    def claim() -> None:
        claim_output(store, prepared.job_doc, prepared.planned.planned)
        heartbeat.start()  # from here on the output tells whether its driver lives

    try:
        if not pending:
            claim()
            stats, gave_up = _run_stats(None, 0), {}
        else:
            events = _RunEvents(events_factory(prepared.plan.rows_total, rows_done), heartbeat,
                                MarkerIndex(store, prepared.request.spec.run.index_seconds))
            report, shape = _render(prepared, pending, events, claim)
            stats, gave_up = _run_stats(report, shape.actors), report.gave_up
        stats["shards_skipped"] = done.num_rows
        stats["wall_seconds"] = round(time.monotonic() - started, 3)
        # Speed over the rendering phase: Ray start-up and model loading are reported in wall_seconds.
        stats["images_per_second"] = round(stats["rows_rendered"] / max(stats.get("render_seconds", 0), 1e-9), 3)
        with heartbeat.beating():  # compacting a big run takes a while: its driver is not gone meanwhile
            summary = _finish(prepared, stats, gave_up)
    except BaseException as exc:
        heartbeat.end("stopped", _stop_reason(exc))
        raise
    done_now = summary.counts["shards_done"]
    heartbeat.end("ended", f"{done_now} of {shards_total} shards done" + (
        "" if summary.complete else "; rerun the same command to render the rest"), shards_done=done_now)
    return summary


def _stop_reason(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return (str(exc) if isinstance(exc, UserFacing) else f"{type(exc).__name__}: {exc}")[:2000]


def _run_stats(report, actors: int) -> dict[str, Any]:
    """What this invocation did; report is the engine's DispatchReport, or None if nothing was pending."""
    per_actor = {
        "model": dict(report.model_loads) if report else {},
        "lora": dict(report.lora_loads) if report else {},
        "controlnet": dict(report.controlnet_loads) if report else {},
    }
    return {
        "shards_rendered": len(report.done) if report else 0, "actors": actors,
        "actors_lost": report.actors_lost if report else 0, "actors_hung": report.actors_hung if report else 0,
        "actors_preempted": report.actors_preempted if report else 0,
        "ray_restarts": report.ray_restarts if report else 0,
        "rows_rendered": report.rows_rendered if report else 0, "rows_adopted": report.rows_adopted if report else 0,
        "render_seconds": round(report.render_finished - report.render_started, 3) if report else 0.0,
        "pipeline_seconds": round(report.pipeline_seconds, 3) if report else 0.0,
        "lora_loads": sum(per_actor["lora"].values()), "controlnet_loads": sum(per_actor["controlnet"].values()),
        "model_loads": sum(per_actor["model"].values()), "loads_per_actor": per_actor,
    }


def _render(prepared: PreparedRun, pending: list[Shard], events: _RunEvents, on_ready):
    from sdbatch.engine import cluster  # Ray is imported only once there is work for it

    spec = prepared.request.spec
    planned = PlannedRows(prepared.planned.planned)

    def make_task(shard: Shard) -> ShardTask:
        rows = tuple(planned.rows(shard))
        return ShardTask(shard.shard_id, new_attempt_id(), rows, spec.output.format, spec.output.quality,
                         spec.output.layout)

    try:
        with events:
            return cluster.run_shards(pending, make_task, prepared.store, spec, events,
                                      first_model=pending[0].variant.model, on_ready=on_ready,
                                      s3=prepared.request.s3, address=prepared.request.address)
    finally:
        events.index.write()  # also when the run stops early: what did commit is indexed for the resume


class _RunEvents:
    """The run's events on their way to the progress display: each committed shard's marker goes to the
    index, and the dispatch loop's ticks feed the heartbeat."""

    def __init__(self, events, heartbeat: Heartbeat, index: MarkerIndex) -> None:
        self.events, self.heartbeat, self.index = events, heartbeat, index

    def shard_done(self, result) -> None:
        self.index.add(result.marker)
        self.events.shard_done(result)

    def tick(self, pool: dict[str, int]) -> None:
        self.heartbeat.beat(pool)

    def __enter__(self) -> _RunEvents:
        self.events.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.events.__exit__(*exc)

    def __getattr__(self, name: str):
        return getattr(self.events, name)


def _finish(prepared: PreparedRun, stats: dict[str, Any], gave_up: dict[str, str]) -> RunSummary:
    store = prepared.store
    counts = run_counts(store)
    rendered = counts["shards_done"] == counts["shards_total"]
    scores = _fill_scores(prepared) if rendered and prepared.request.spec.score.steps else None
    if scores is not None:
        counts["shards_unscored"], stats["scores_written"] = len(scores.failed), scores.written
        gave_up = {**gave_up, **{shard: f"not scored: {why}" for shard, why in scores.failed.items()}}
    if rendered and not store.exists(COMPACTED_KEY):
        # A finished run's results as a few files, which its readers prefer (and datasets').
        publish(store, prepared.request.address)
    failures: list[dict[str, str]] = []
    if counts["rows_failed"]:
        failures = _first_failures(store)
    summary = RunSummary(store.uri, counts, failures, gave_up, stats)
    if summary.complete:
        # Load totals are those of the invocation that finished the run (see last_run for the rest).
        write_success(store, {**counts, "finished": True, "shards": counts["shards_total"],
                              "failed": failures, "run_fingerprint": prepared.job_doc["run_fingerprint"],
                              "lora_loads": stats["lora_loads"], "controlnet_loads": stats["controlnet_loads"],
                              "loads_per_actor": stats["loads_per_actor"], "last_run": stats,
                              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        summary.counts["finished"] = True
    return summary


def _first_failures(store: Store) -> list[dict[str, str]]:
    """The first failed rows (id, error), read through the store's retrying client."""
    failures: list[dict[str, str]] = []
    for batch in scan_results(store, ["id", "error"], where="status = 'failed'"):
        failures += batch.slice(0, MAX_LISTED_FAILURES - len(failures)).to_pylist()
        if len(failures) >= MAX_LISTED_FAILURES:
            break
    return failures


def _fill_scores(prepared: PreparedRun):
    """The score files the actors did not write (a step failed, an actor died between its commit and its scores,
    steps added to a finished run), from the stored images; usually there are none and nothing starts."""
    from sdbatch.run.score import score_output

    request = prepared.request
    run = request.spec.run
    return score_output(prepared.store, request.spec.score, request.s3, request.address, run.actors, run.device,
                        limits=run)


def submit_to_cluster(prepared: PreparedRun):
    """Hand the run to the cluster's Jobs API (its driver runs there); returns the RemoteJob."""
    import json

    from sdbatch.engine import jobs

    existing_run(prepared.store, prepared.job_doc)  # a different run in this output: refuse before submitting
    spec_json = json.dumps(prepared.request.spec.to_dict(), sort_keys=True)
    request = prepared.request
    endpoint = request.s3.endpoint_url if request.cluster_s3_endpoint is None else request.cluster_s3_endpoint
    return jobs.submit(prepared.store, request.address, prepared.job_doc["run_fingerprint"],
                       prepared.planned.source, spec_json, endpoint or None)
