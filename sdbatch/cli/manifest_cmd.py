"""`sdbatch manifest`: validate, show and create manifests."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import pyarrow as pa
import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.table import Table

from sdbatch.cli.handler import print_notes
from sdbatch.cli.options import (
    ClipSkip,
    EmbeddingDir,
    JobFile,
    LoraDir,
    MaxPixels,
    MaxSteps,
    PromptSyntax,
    S3Endpoint,
    job_spec,
    limit_overrides,
    prompt_overrides,
    s3_settings,
)
from sdbatch.manifest.authoring import AuthoringOptions, build_manifest
from sdbatch.manifest.normalize import normalize, read_manifest
from sdbatch.manifest.problems import Notes
from sdbatch.plan.shards import plan_shards

app = typer.Typer(help="Validate, inspect and create manifests.", no_args_is_help=True)
SHOWN_ROWS = 5


@app.command("validate")
def validate(manifest: str, job: JobFile = None, s3_endpoint: S3Endpoint = None, lora_dir: LoraDir = None,
             embedding_dir: EmbeddingDir = None, prompt_syntax: PromptSyntax = None,
             clip_skip: ClipSkip = None, max_steps: MaxSteps = None, max_pixels: MaxPixels = None) -> None:
    """Check a manifest against the schema; exit 2 with the column, row and fix if it is invalid."""
    from sdbatch.plan.planned import plan_manifest

    spec = job_spec(job, **{"defaults.lora_dir": lora_dir}, **prompt_overrides(embedding_dir, prompt_syntax, clip_skip),
                    **limit_overrides(max_steps, max_pixels))
    with tempfile.TemporaryDirectory(prefix="sdbatch-validate-") as workdir:
        planned = plan_manifest(manifest, spec.defaults, spec.output.shard_size, workdir, s3_settings(s3_endpoint),
                                write=False)
    print_notes(planned.notes)
    plan = planned.plan
    typer.echo(f"ok: {plan.rows_total} rows, {len(plan.variants())} variant(s), {len(plan.shards)} shard(s)")


@app.command("show")
def show(manifest: str, job: JobFile = None, s3_endpoint: S3Endpoint = None, lora_dir: LoraDir = None,
         embedding_dir: EmbeddingDir = None, prompt_syntax: PromptSyntax = None, clip_skip: ClipSkip = None,
         max_steps: MaxSteps = None, max_pixels: MaxPixels = None,
         rows: Annotated[int, typer.Option(help="How many rows to print.")] = SHOWN_ROWS) -> None:
    """Row count, columns, a few rows and the distinct variants (with the job's defaults applied)."""
    console = Console()
    spec = job_spec(job, **{"defaults.lora_dir": lora_dir}, **prompt_overrides(embedding_dir, prompt_syntax, clip_skip),
                    **limit_overrides(max_steps, max_pixels))
    raw = read_manifest(manifest, s3_settings(s3_endpoint))
    notes = Notes()
    table = normalize(raw, spec.defaults, notes=notes)
    print_notes(notes)
    console.print(f"[bold]{manifest}[/]: {raw.num_rows} rows")
    console.print("columns: " + ", ".join(f"{f.name} ({f.type})" for f in raw.schema))
    console.print(_rows_table(table.slice(0, rows)))
    variants = Table("rows", "variant", title="variants (rows that share a pipeline call)")
    for variant, count in sorted(plan_shards(table, spec.output.shard_size)[0].variants().items(),
                                 key=lambda item: -item[1]):
        variants.add_row(str(count), variant.describe())
    console.print(variants)


def _rows_table(table: pa.Table) -> Table:
    shown = Table(*table.column_names, title="first rows")
    for row in table.to_pylist():
        shown.add_row(*(_short(row[name]) for name in table.column_names))
    return shown


def _short(value, width: int = 40) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command("new")
def new(source: Path = typer.Argument(..., help=(
            "Prompts: .txt (one a line; blank and # lines skipped), .csv or .jsonl (a 'prompt' column plus "
            "any manifest or label columns), or a .yaml template (see manifests/README.md).")),
        output: Annotated[Path, typer.Option("--output", "-o", help="Manifest to write (.parquet).")] = ...,
        seeds: Annotated[int, typer.Option(help="Images per prompt, each with its own seed.")] = 1,
        seed_start: Annotated[Optional[int], typer.Option(
            help="Write explicit seeds start..start+N-1 per prompt; default: leave seeds to the job "
                 "seed, which derives a distinct one per id.")] = None,
        max_rows: Annotated[int, typer.Option(help="Refuse to write more rows than this (see --truncate).")]
        = AuthoringOptions.max_rows,
        truncate: Annotated[bool, typer.Option(help="Over --max-rows, keep the first rows instead of refusing.")]
        = False,
        wildcards: Annotated[Optional[Path], typer.Option(
            help="Folder of wildcard files (__animal__ reads animal.txt); default: 'wildcards' next to the "
                 "template.")] = None) -> None:
    """Build a manifest: N rows per prompt, ids p{prompt}-s{seed index}, template choices as columns."""
    options = AuthoringOptions(seeds, seed_start, max_rows, truncate, wildcards)
    authored = build_manifest(source, options)
    output.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(authored.table, output)
    typer.echo(f"wrote {output}: {authored.table.num_rows} rows ({authored.summary})")


@app.command("from-images")
def from_images(location: Annotated[str, typer.Argument(help="A folder or s3://bucket/prefix of rendered images.")],
                output: Annotated[Path, typer.Option("--output", "-o", help="Manifest to write (.parquet).")],
                s3_endpoint: S3Endpoint = None,
                strict: Annotated[bool, typer.Option(help=(
                    "Refuse images whose metadata asks for what sdbatch does not render (hires upscalers, "
                    "variation seeds, a sampler diffusers lacks, ...) instead of reporting them."))] = False,
                vae_dir: Annotated[Optional[str], typer.Option(help=(
                    "Folder where A1111's `VAE: name.safetensors` is looked up; without it the field is "
                    "reported, not rendered."))] = None) -> None:
    """A manifest that renders the images again, from what their generator embedded (A1111/Forge, ComfyUI,
    NovelAI, InvokeAI, Fooocus, sdbatch)."""
    from sdbatch.manifest.from_images import ReadOptions, write_manifest_from_images

    output.parent.mkdir(parents=True, exist_ok=True)
    read = write_manifest_from_images(location, str(output), s3_settings(s3_endpoint), strict=strict,
                                      options=ReadOptions(vae_dir=vae_dir))
    note = f"; {read.skipped} image(s) without generation metadata skipped" if read.skipped else ""
    made = ", ".join(f"{name} {count}" for name, count in read.generators.most_common())
    typer.echo(f"wrote {output}: {read.rows} rows ({made}){note}")
    if read.unreadable_count:
        typer.echo(f"skipped, not whole images: {read.skips()}")
    if read.dropped:
        typer.echo(f"not rendered, so left out of the manifest: {read.summary()} (--strict refuses them)")
    if read.embeddings:
        names = ", ".join(f"{name} ({count})" for name, count in sorted(read.embeddings.items()))
        typer.echo(f"made with textual inversion embeddings: {names}; submit with --embedding-dir holding "
                   "those files (their hashes are in the manifest's ti_hashes column)")

