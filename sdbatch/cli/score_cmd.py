"""`sdbatch score`: run score steps over an existing output's images, adding their columns; resumable per shard."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from sdbatch.cli.options import (
    AestheticModel,
    ClipModel,
    JobFile,
    S3Endpoint,
    SafetyModel,
    job_spec,
    s3_settings,
    score_overrides,
)
from sdbatch.errors import UsageError

Opt = typer.Option


def register(app: typer.Typer) -> None:
    app.command("score")(score)


def score(
    output: Annotated[str, typer.Argument(help="A run's output folder or s3://bucket/prefix.")],
    steps: Annotated[str, Opt(help="Comma-separated: clip, aesthetic, safety, phash.")],
    job: JobFile = None,
    clip_model: ClipModel = None,
    aesthetic_model: AestheticModel = None,
    safety_model: SafetyModel = None,
    s3_endpoint: S3Endpoint = None,
    address: Annotated[Optional[str], Opt(envvar="RAY_ADDRESS", help=(
        "Ray cluster ('auto' or HOST:PORT); default: a private local Ray."))] = None,
    actors: Annotated[Optional[int], Opt(help="Actors; default one per GPU, or what the CPUs hold.")] = None,
    device: Annotated[str, Opt(help="auto, cuda or cpu.")] = "auto",
) -> int:
    """Score the committed images of OUTPUT that a step has not scored yet; rerun to finish an interrupted one."""
    from sdbatch.run.score import score_output
    from sdbatch.store import open_store

    s3 = s3_settings(s3_endpoint)
    spec = job_spec(job, s3, **score_overrides(steps, clip_model, aesthetic_model, safety_model))
    if not spec.score.steps:
        raise UsageError("--steps names no step; use any of clip, aesthetic, safety, phash")
    store = open_store(output, s3)
    console = Console()
    summary = score_output(store, spec.score, s3, address, actors, device)
    console.print(f"{summary.shards_committed} committed shards, {summary.shards_to_score} to score "
                  f"({', '.join(spec.score.steps)})")
    for step in spec.score.steps:
        console.print(f"  {step}: {summary.written.get(step, 0)} score files written")
    for shard, why in list(summary.failed.items())[:20]:
        console.print(f"[red]shard {shard} not scored[/]: {escape(why)}", highlight=False)
    if summary.failed:
        console.print(f"{len(summary.failed)} shards not scored; rerun the same command to retry them")
        return 1
    return 0
