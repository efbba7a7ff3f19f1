"""`sdbatch manifest`: validate, show and create manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import pyarrow as pa
import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.table import Table

from sdbatch.cli.options import JobFile, LoraDir, S3Endpoint, job_spec, s3_settings
from sdbatch.manifest import ManifestError, normalize, read_manifest
from sdbatch.plan import plan_shards

app = typer.Typer(help="Validate, inspect and create manifests.", no_args_is_help=True)
SHOWN_ROWS = 5


@app.command("validate")
def validate(manifest: str, job: JobFile = None, s3_endpoint: S3Endpoint = None, lora_dir: LoraDir = None) -> None:
    """Check a manifest against the schema; exit 2 with the column, row and fix if it is invalid."""
    spec = job_spec(job, **{"defaults.lora_dir": lora_dir})
    table = normalize(read_manifest(manifest, s3_settings(s3_endpoint)), spec.defaults)
    plan = plan_shards(table, spec.output.shard_size)
    typer.echo(f"ok: {table.num_rows} rows, {len(plan.variants())} variant(s), {len(plan.shards)} shard(s)")


@app.command("show")
def show(manifest: str, job: JobFile = None, s3_endpoint: S3Endpoint = None, lora_dir: LoraDir = None,
         rows: Annotated[int, typer.Option(help="How many rows to print.")] = SHOWN_ROWS) -> None:
    """Row count, columns, a few rows and the distinct variants (with the job's defaults applied)."""
    console = Console()
    spec = job_spec(job, **{"defaults.lora_dir": lora_dir})
    raw = read_manifest(manifest, s3_settings(s3_endpoint))
    table = normalize(raw, spec.defaults)
    console.print(f"[bold]{manifest}[/]: {raw.num_rows} rows")
    console.print("columns: " + ", ".join(f"{f.name} ({f.type})" for f in raw.schema))
    console.print(_rows_table(table.slice(0, rows)))
    variants = Table("rows", "variant", title="variants (rows that share a pipeline call)")
    for variant, count in sorted(plan_shards(table, spec.output.shard_size).variants().items(),
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
def new(prompts: Path = typer.Argument(..., help="Text file: one prompt a line; blank and # lines skipped."),
        output: Annotated[Path, typer.Option("--output", "-o", help="Manifest to write (.parquet).")] = ...,
        seeds: Annotated[int, typer.Option(help="Images per prompt, each with its own seed.")] = 1,
        seed_start: Annotated[Optional[int], typer.Option(
            help="Write explicit seeds start..start+N-1 per prompt; default: leave seeds to the job "
                 "seed, which derives a distinct one per id.")] = None) -> None:
    """Build a manifest from a prompts file: N rows per prompt, ids p{prompt}-s{seed index}."""
    if not prompts.is_file():
        raise ManifestError(f"prompts file {prompts} does not exist")
    if seeds < 1:
        raise ManifestError("--seeds must be at least 1")
    lines = [line.strip() for line in prompts.read_text().splitlines()]
    texts = [line for line in lines if line and not line.startswith("#")]
    if not texts:
        raise ManifestError(f"prompts file {prompts} has no prompts (one per line; # starts a comment)")
    table = prompts_table(texts, seeds, seed_start)
    output.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, output)
    typer.echo(f"wrote {output}: {table.num_rows} rows ({len(texts)} prompts x {seeds} seeds)")


def prompts_table(texts: list[str], seeds: int, seed_start: int | None = None) -> pa.Table:
    width = max(4, len(str(len(texts) - 1)))
    rows = [{"id": f"p{p:0{width}d}-s{k}", "prompt": text, "prompt_index": p, "seed_index": k}
            for p, text in enumerate(texts) for k in range(seeds)]
    table = pa.Table.from_pylist(rows)
    if seed_start is not None:
        table = table.append_column("seed", pa.array([seed_start + r["seed_index"] for r in rows], pa.int64()))
    return table
