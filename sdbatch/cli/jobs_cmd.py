"""`sdbatch status`, `logs`, `cancel` and `compact`: watch, stop and tidy a run by its output, wherever it runs."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from sdbatch.cli.options import S3Endpoint, s3_settings

RunOutput = Annotated[str, typer.Argument(help="The run's output: a folder or s3://bucket/prefix.")]
Address = Annotated[Optional[str], typer.Option(envvar="RAY_ADDRESS", help=(
    "Dashboard URL of the cluster; default: the one the run was submitted to."))]
# The cluster a big run's compaction runs on as tasks (its parts in parallel); a small run is compacted here.
RayAddress = Annotated[Optional[str], typer.Option(envvar="RAY_ADDRESS", help=(
    "Ray cluster address (host:6379, auto) a big run is compacted on; default: a local Ray on this machine."))]


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("logs")(logs)
    app.command("cancel")(cancel)
    app.command("compact")(compact)


def _store(output: str, s3_endpoint: Optional[str]):
    from sdbatch.store import open_store

    return open_store(output, s3_settings(s3_endpoint))


def status(output: RunOutput, s3_endpoint: S3Endpoint = None, address: Address = None) -> None:
    """Counts of a run from its output store, finished or not, whether its driver is alive (its heartbeat),
    and its Ray Job's state if it has one."""
    from sdbatch.errors import ObjectNotFound
    from sdbatch.output.heartbeat import describe, read_progress
    from sdbatch.output.job import run_counts

    store = _store(output, s3_endpoint)
    try:
        counts = run_counts(store)
    except ObjectNotFound:
        counts = None  # submitted, but its driver has not claimed the output yet
    for key, value in (counts or {"rows_total": "not started yet"}).items():
        typer.echo(f"{key}: {value}")
    typer.echo(f"driver: {describe(read_progress(store))}")
    if store.exists("_submit/ray_job.json"):
        from sdbatch.engine import jobs

        try:
            submission_id, state = jobs.job_status(store, _http(address))
            typer.echo(f"ray_job: {submission_id} {state}")
        except jobs.JobsError as exc:
            typer.echo(f"ray_job: unknown ({exc})")


def logs(output: RunOutput, follow: Annotated[bool, typer.Option(help="Keep printing until the job ends.")] = False,
         s3_endpoint: S3Endpoint = None, address: Address = None) -> None:
    """The driver log of a run submitted to a cluster."""
    from sdbatch.engine import jobs

    jobs.logs(_store(output, s3_endpoint), _http(address), follow=follow, write=typer.echo)


def cancel(output: RunOutput, s3_endpoint: S3Endpoint = None, address: Address = None) -> None:
    """Stop a run submitted to a cluster; what is committed stays, and the same submit resumes it."""
    from sdbatch.engine import jobs

    submission_id = jobs.cancel(_store(output, s3_endpoint), _http(address))
    typer.echo(f"stopping Ray Job {submission_id}; rerun the same submit to resume")


def compact(output: RunOutput, s3_endpoint: S3Endpoint = None, address: RayAddress = None) -> None:
    """Join a finished run's results with its manifest into a few Parquet files (results/), which
    sdbatch.open_results and read_results then read, and (files layout) write the imagefolder metadata; a
    complete submit does this itself."""
    from sdbatch.run.publish import publish

    doc = publish(_store(output, s3_endpoint), address)
    typer.echo(f"{doc['rows']} rows in {len(doc['parts'])} file(s) under {output.rstrip('/')}/results/")


def _http(address: Optional[str]) -> Optional[str]:
    # RAY_ADDRESS may hold a GCS address (auto, host:6379) meant for drivers; only a URL reaches the Jobs API.
    from sdbatch.run.driver import is_jobs_address

    return address if is_jobs_address(address) else None
