"""`sdbatch plan` (a dry run: loads, time and cost) and `sdbatch gallery` (the morning report)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from sdbatch.cli.handler import print_notes
from sdbatch.cli.options import (
    Affinity,
    ClipSkip,
    EmbeddingDir,
    GuidanceScale,
    Height,
    JobFile,
    LoraDir,
    Manifest,
    MaxPixels,
    MaxSteps,
    Model,
    Price,
    PromptSyntax,
    S3Endpoint,
    Scheduler,
    ShardSize,
    Steps,
    Vae,
    Width,
    job_spec,
    limit_overrides,
    prompt_overrides,
    row_overrides,
    s3_settings,
)

Opt = typer.Option


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
    app.command("gallery")(gallery)


def plan(
    manifest: Manifest,
    job: JobFile = None,
    s3_endpoint: S3Endpoint = None,
    lora_dir: LoraDir = None,
    embedding_dir: EmbeddingDir = None,
    prompt_syntax: PromptSyntax = None,
    clip_skip: ClipSkip = None,
    max_steps: MaxSteps = None,
    max_pixels: MaxPixels = None,
    model: Model = None,
    vae: Vae = None,
    steps: Steps = None,
    guidance_scale: GuidanceScale = None,
    width: Width = None,
    height: Height = None,
    scheduler: Scheduler = None,
    shard_size: ShardSize = None,
    affinity: Affinity = None,
    gpus: Annotated[Optional[int], Opt(help="GPUs (one actor each); default the job's run.actors, else 1.")] = None,
    images_per_second: Annotated[Optional[float], Opt(
        help="Measured text-to-image images/s of ONE target GPU at this model, size and steps (img2img rows take "
             "strength x that time, hires rows add scale^2 x hires steps / steps); without it, no time or cost.")
    ] = None,
    gpu_hour_price: Price = None,
    load_seconds: Annotated[float, Opt(help="Seconds each LoRA or ControlNet load takes (default 0: left out).")] = 0.0,
) -> None:
    """Dry run: rows, variants, shards, the LoRA/ControlNet loads the scheduler would do, time and cost.
    Reads the manifest only: nothing is written, no Ray, no GPU."""
    from sdbatch.plan.planned import plan_manifest
    from sdbatch.run.estimate import Rates, estimate

    overrides = {**row_overrides(model, vae, steps, guidance_scale, width, height, scheduler, lora_dir),
                 **prompt_overrides(embedding_dir, prompt_syntax, clip_skip), **limit_overrides(max_steps, max_pixels),
                 "output.shard_size": shard_size, "run.affinity": affinity}
    s3 = s3_settings(s3_endpoint)
    spec = job_spec(job, s3, **overrides)
    with tempfile.TemporaryDirectory(prefix="sdbatch-plan-") as workdir:
        planned = plan_manifest(manifest, spec.defaults, spec.output.shard_size, workdir, s3, write=False)
    print_notes(planned.notes)
    shards = planned.plan
    result = estimate(shards, gpus or spec.run.actors or 1, Rates(images_per_second, gpu_hour_price, load_seconds),
                      spec.run.affinity, spec.run.shards_in_flight)
    Console().print(_estimate_table(result, spec.output.shard_size))


def _estimate_table(result, shard_size: int) -> Table:
    from sdbatch.run.estimate import duration

    d, o = result.dispatch, result.other
    policy = "affinity" if d.affinity else "plan order"
    table = Table(show_header=False, title="dry run (nothing written)")
    table.add_row("rows", f"{result.rows:,}")
    table.add_row("variants", f"{result.variants:,}")
    table.add_row("shards", f"{result.shards:,} of up to {shard_size} rows")
    busy = "" if d.actors == result.gpus else f" (only {d.actors} get a shard; lower --shard-size to use all)"
    table.add_row("GPUs", f"{result.gpus}{busy}")
    table.add_row("loads", f"{d.model_loads} model, {d.lora_loads} LoRA, {d.controlnet_loads} ControlNet "
                           f"({policy}; {'plan order' if d.affinity else 'affinity'} would do {o.lora_loads} "
                           f"LoRA, {o.controlnet_loads} ControlNet)")
    if result.wall_seconds is None:
        table.add_row("time, cost", "no rate given: pass --images-per-second (one target GPU's measured rate) "
                                    "for wall time, GPU-hours and cost")
        return table
    rates = result.rates
    loads = f", {rates.load_seconds:g} s a load" if rates.load_seconds else ", loading left out"
    table.add_row("wall time", f"{duration(result.wall_seconds)} of rendering at {rates.images_per_second:g} "
                               f"images/s per GPU{loads}; add start-up and model loading")
    table.add_row("GPU-hours", f"{_number(result.billed_gpu_hours)} held ({result.gpus} GPUs x wall time), "
                               f"{_number(result.render_gpu_hours)} rendering")
    if result.cost is None:
        table.add_row("cost", "no price given: pass --gpu-hour-price")
    else:
        table.add_row("cost", f"{_number(result.cost)} at {rates.gpu_hour_price:g} per GPU-hour; "
                              f"{_number(result.cost_per_1000)} per 1,000 images")
    return table


def _number(value: float) -> str:
    # Two decimals for money-sized numbers, three significant digits for the small ones a test run gives.
    return f"{value:,.2f}" if value >= 10 else f"{value:.3g}"


def gallery(
    output: Annotated[str, typer.Argument(help="The run's output: a folder or s3://bucket/prefix.")],
    out: Annotated[Optional[Path], Opt("--out", "-o", help="Write the page here instead of OUTPUT/gallery.html.")]
    = None,
    group_by: Annotated[Optional[str], Opt(help="Column to group by (a label or manifest column); default: "
                                                "the variant (model, size, steps, LoRAs, ...).")] = None,
    gpu_hour_price: Price = None,
    expires: Annotated[int, Opt(help="Lifetime of presigned S3 image links, seconds (7 days at most).")]
    = 7 * 24 * 3600,
    per_group: Annotated[int, Opt(help="Thumbnails per group, spread evenly through it.")] = 48,
    max_groups: Annotated[int, Opt(help="Groups shown; the rest are counted.")] = 100,
    where: Annotated[Optional[str], Opt(help="Only rows a SQL WHERE clause selects, e.g. \"clip_score > 0.25 "
                                             "and label = 'cat'\" (charts, thumbnails and failures).")] = None,
    s3_endpoint: S3Endpoint = None,
) -> None:
    """A static HTML contact sheet: thumbnails by group with prompt, seed and id, the failures and totals."""
    from sdbatch.run.gallery import GALLERY_KEY, GallerySettings, make_gallery
    from sdbatch.store import open_store

    store = open_store(output, s3_settings(s3_endpoint))
    settings = GallerySettings(group_by, per_group, max_groups, gpu_hour_price=gpu_hour_price, expires=expires,
                               where=where)
    where = make_gallery(store, settings, out)
    typer.echo(f"gallery: {where}")
    if out is None and store.local_folder() is None:  # elsewhere: a link that needs no credentials to open
        url = store.browser_url(GALLERY_KEY, settings.expires, "text/html; charset=utf-8")
        typer.echo(f"open it (link valid {settings.expires // 3600} h): {url}")
