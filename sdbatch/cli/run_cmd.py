"""`sdbatch submit` and `sdbatch demo`: run a manifest, here or as a Ray Job, and print its summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sdbatch.cli.handler import print_notes
from sdbatch.cli.options import (
    AestheticModel,
    Affinity,
    ClipModel,
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
    Output,
    Price,
    PromptSyntax,
    S3Endpoint,
    SafetyModel,
    Scheduler,
    ScoreSteps,
    ShardSize,
    Steps,
    Vae,
    Width,
    job_spec,
    limit_overrides,
    prompt_overrides,
    row_overrides,
    s3_settings,
    score_overrides,
)
from sdbatch.family import FAMILIES
from sdbatch.run.driver import (
    RunSummary,
    SubmitRequest,
    execute,
    is_jobs_address,
    prepare,
    submit_to_cluster,
)

DEMO_JOB = Path("jobs") / "demo.toml"
DEMO_SUBJECTS = ("a red fox", "a lighthouse", "a bowl of ramen", "an old tram", "a paper crane",
                 "a desert cactus", "a snowy cabin", "a koi pond")
DEMO_STYLES = ("watercolor", "pixel art")

Opt = typer.Option


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)
    app.command("demo")(demo)


def submit(
    manifest: Manifest,
    output: Output,
    job: JobFile = None,
    s3_endpoint: S3Endpoint = None,
    address: Annotated[Optional[str], Opt(envvar="RAY_ADDRESS", help=(
        "Ray cluster: a dashboard URL (http://HEAD:8265) submits a Ray Job that runs on after this "
        "command returns; 'auto' or HOST:PORT runs the driver here; default: a private local Ray."))] = None,
    follow: Annotated[bool, Opt(help="With a dashboard URL: stay and print the job's log until it ends.")] = False,
    model: Model = None,
    vae: Vae = None,
    steps: Steps = None,
    guidance_scale: GuidanceScale = None,
    width: Width = None,
    height: Height = None,
    scheduler: Scheduler = None,
    seed: Annotated[Optional[int], Opt(help="Job seed: rows without a seed derive one from it and their id.")] = None,
    image_format: Annotated[Optional[str], Opt("--format", help="png, jpeg or webp.")] = None,
    quality: Annotated[Optional[int], Opt(help="jpeg/webp quality, 1-100.")] = None,
    layout: Annotated[Optional[str], Opt(help="files (images/{shard}/{id}.ext) or webdataset "
                                              "(shards/{shard}.tar for data loaders).")] = None,
    shard_size: ShardSize = None,
    batch_size: Annotated[Optional[int], Opt(
        help="Rows per pipeline call; default what fits the GPU (4 on CPU).")] = None,
    dtype: Annotated[Optional[str], Opt(help="auto (bfloat16 where the GPU has it, else float16; float32 on "
                                             "CPU), bfloat16, float16 or float32.")] = None,
    compile: Annotated[Optional[bool], Opt("--compile/--no-compile", help=(
        "torch.compile the UNet (LoRAs hotswapped, no recompiles); about a minute per new shape first."))] = None,
    offload: Annotated[Optional[str], Opt(help=(
        "none, model or sequential: diffusers' CPU offload, for a GPU too small for the model (slower)."))] = None,
    quantize: Annotated[Optional[str], Opt(help=(
        "none, int8 or fp8: the denoiser's weights quantized with torchao (fp8 on Ada/Hopper GPUs)."))] = None,
    step_cache: Annotated[Optional[str], Opt(help=(
        "none, first_block:<threshold> or taylorseer:<interval>: skip denoiser work between steps "
        "(diffusion transformers; changes images a little)."))] = None,
    actors: Annotated[Optional[int], Opt(help="Actors; default one per GPU, or what the CPUs hold.")] = None,
    device: Annotated[Optional[str], Opt(help="auto, cuda (one GPU per actor, also before an autoscaler "
                                              "has started GPU nodes) or cpu.")] = None,
    cluster_s3_endpoint: Annotated[Optional[str], Opt(help=(
        "With a dashboard URL: the S3 endpoint as the cluster reaches it, if not the same as --s3-endpoint; "
        "'' leaves it to the cluster's own AWS_ENDPOINT_URL."))] = None,
    lora_dir: LoraDir = None,
    embedding_dir: EmbeddingDir = None,
    prompt_syntax: PromptSyntax = None,
    clip_skip: ClipSkip = None,
    max_steps: MaxSteps = None,
    max_pixels: MaxPixels = None,
    affinity: Affinity = None,
    gpu_hour_price: Price = None,
    score: ScoreSteps = None,
    clip_model: ClipModel = None,
    aesthetic_model: AestheticModel = None,
    safety_model: SafetyModel = None,
) -> int:
    """Render every row of a manifest into OUTPUT; rerun the same command to resume."""
    overrides = {
        **row_overrides(model, vae, steps, guidance_scale, width, height, scheduler, lora_dir), "defaults.seed": seed,
        **prompt_overrides(embedding_dir, prompt_syntax, clip_skip), **limit_overrides(max_steps, max_pixels),
        "output.format": image_format, "output.quality": quality, "output.layout": layout,
        "output.shard_size": shard_size, "run.batch_size": batch_size, "run.actors": actors,
        "run.affinity": affinity, "run.device": device, "render.dtype": dtype, "render.compile": compile,
        "render.offload": offload, "render.quantize": quantize, "render.step_cache": step_cache,
        **score_overrides(score, clip_model, aesthetic_model, safety_model),
    }
    s3 = s3_settings(s3_endpoint)
    spec = job_spec(job, s3, **overrides)
    request = SubmitRequest(manifest, output, spec, address, s3, cluster_s3_endpoint)
    if is_jobs_address(address):
        return submit_and_follow(request, Console(), follow)
    return run_and_report(request, Console(), gpu_hour_price)


def submit_and_follow(request: SubmitRequest, console: Console, follow: bool) -> int:
    from sdbatch.engine import jobs
    from sdbatch.output.job import run_counts

    with prepare(request) as prepared:
        print_notes(prepared.planned.notes, console)
        remote = submit_to_cluster(prepared)
    verb = "submitted" if remote.new else f"is already there ({remote.status}); not submitted again"
    console.print(f"Ray Job {remote.submission_id} {verb} at {remote.address}; output {prepared.store.uri}")
    if not follow:
        uri = prepared.store.uri
        console.print(f"watch it with: sdbatch status {uri} / sdbatch logs {uri} --follow")
        return 0
    status = jobs.logs(prepared.store, follow=True, write=lambda text: console.print(text, markup=False,
                                                                                      highlight=False))
    counts = run_counts(prepared.store)
    console.print(f"job {status}: {counts['rows_ok']} ok, {counts['rows_failed']} failed, "
                  f"{counts['rows_pending']} pending of {counts['rows_total']}")
    return 0 if status == "SUCCEEDED" else 1


def run_and_report(request: SubmitRequest, console: Console, gpu_hour_price: float | None = None) -> int:
    from sdbatch.cli.progress import RunProgress

    with prepare(request) as prepared:
        print_notes(prepared.planned.notes, console)
        console.print(f"{prepared.plan.rows_total} rows in {len(prepared.plan.shards)} shards -> {prepared.store.uri}")
        summary = execute(prepared, lambda total, done: RunProgress(console, total, done))
    print_summary(console, summary, gpu_hour_price)
    return summary.exit_code


def print_summary(console: Console, summary: RunSummary, gpu_hour_price: float | None = None) -> None:
    c, s = summary.counts, summary.stats
    # As the gallery counts them: rows' time inside pipeline calls, so a floor on the bill.
    gpu_hours = s.get("pipeline_seconds", 0.0) / 3600
    cost = ""
    if gpu_hour_price is not None and c["rows_ok"]:
        per_1000 = gpu_hours * gpu_hour_price / c["rows_ok"] * 1000
        cost = f"; {per_1000:.4g} per 1,000 images at {gpu_hour_price:g} per GPU-hour"
    table = Table(show_header=False, title="run summary")
    for label, value in [("output", summary.output), ("rows", c["rows_total"]), ("ok", c["rows_ok"]),
                         ("failed", c["rows_failed"]), ("pending", c["rows_pending"]),
                         ("shards done", f"{c['shards_done']}/{c['shards_total']}"),
                         ("this run", f"{s['rows_rendered']} rendered, {s['rows_adopted']} adopted, "
                                      f"{s['shards_skipped']} shards already done"),
                         ("loads", f"{s['model_loads']} model, {s['lora_loads']} LoRA, "
                                   f"{s['controlnet_loads']} ControlNet ({s['actors']} actors)"),
                         ("speed", f"{s['images_per_second']} images/s while rendering; {s['wall_seconds']} s in all"),
                         ("GPU-hours", f"{gpu_hours:.4g} in pipeline calls this run{cost}")]:
        table.add_row(label, str(value))
    console.print(table)
    for failure in summary.failures[:20]:
        console.print(f"[red]failed[/] {failure['id']}: {escape(failure['error'])}", highlight=False)
    by_error: dict[str, list[str]] = {}  # a model that cannot load gives up all its shards for one reason
    for shard_id, error in summary.gave_up.items():
        by_error.setdefault(error, []).append(shard_id)
    for error, shards in by_error.items():
        named = ", ".join(shards[:5]) + (f" and {len(shards) - 5} more" if len(shards) > 5 else "")
        what = f"shard {named}" if len(shards) == 1 else f"{len(shards)} shards ({named})"
        console.print(f"[red]{what} not done[/]: {escape(error.rstrip('. '))}; rerun the same command to retry",
                      highlight=False)
    if summary.complete:
        console.print(f"images and results in {summary.output} (read them with sdbatch.read_results)")


def demo(output: Annotated[Path, Opt("--output", "-o", help="Where to write the demo run.")] = Path("demo-output/run"),
         job: JobFile = None,
         family: Annotated[Optional[str], Opt(help="The model family whose tiny model renders the demo: "
                                                   f"{', '.join(f.name for f in FAMILIES)} (or the tiny model's name, "
                                                   "sd15; default: the job's model)")]
         = None) -> int:
    """Build the tiny offline model, write a sample manifest and render it on a local Ray."""
    import pyarrow.parquet as pq

    from sdbatch.manifest.authoring import prompts_table

    job_file = job or str(_find_demo_job())
    overrides = _family_model(family) if family else {}
    prompts = [f"{subject}, {style}" for subject in DEMO_SUBJECTS for style in DEMO_STYLES]
    manifest = output.parent / "demo-manifest.parquet"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(prompts_table(prompts, seeds=2), manifest)
    console = Console()
    console.print(f"demo: {len(prompts) * 2} rows from {manifest}, settings from {job_file}")
    request = SubmitRequest(str(manifest), str(output), job_spec(job_file, **overrides))
    return run_and_report(request, console)


def _family_model(name: str) -> dict:
    """The job's model and guidance replaced by a family's tiny model and the guidance it is used at."""
    found = next((f for f in FAMILIES if name in (f.name, f.tiny)), None)  # sd1 or its tiny model's sd15
    if found is None or found.tiny is None:
        raise typer.BadParameter(f"{name!r} is not a family with a tiny model; use one of "
                                 f"{', '.join(f.name for f in FAMILIES if f.tiny)}", param_hint="--family")
    return {"defaults.model": f"tiny:{found.tiny}", "defaults.guidance_scale": found.guidance_scale}


def _find_demo_job() -> Path:
    for candidate in (DEMO_JOB, Path(__file__).resolve().parents[2] / DEMO_JOB):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{DEMO_JOB} not found; run the demo from the sdbatch checkout or pass --job")
