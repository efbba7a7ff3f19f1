"""`sdbatch export`: a run's ok images and rows as a Hugging Face dataset (parquet, imagefolder, webdataset)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from sdbatch.cli.options import S3Endpoint, s3_settings
from sdbatch.errors import UsageError

Opt = typer.Option
WHERE_MODULE = "sdbatch.output.where"


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    output: Annotated[str, typer.Argument(help="A run's output folder or s3://bucket/prefix.")],
    dest: Annotated[str, typer.Argument(help="An empty folder or s3://bucket/prefix for the dataset.")],
    format: Annotated[str, Opt("--format", help=(
        "parquet (data/train-*.parquet, images inside: what the Hub reads best), imagefolder (train/ images "
        "beside train/metadata.parquet) or webdataset (data/train-*.tar)."))],
    where: Annotated[Optional[str], Opt(help=(
        "Only the rows this condition keeps, over the results' columns, e.g. \"aesthetic > 6 AND label = 'cat'\"."))
    ] = None,
    rows_per_file: Annotated[Optional[int], Opt(help=(
        "Rows per data file (parquet, webdataset); default: as many as ~500 MB holds."))] = None,
    s3_endpoint: S3Endpoint = None,
    address: Annotated[Optional[str], Opt(envvar="RAY_ADDRESS", help=(
        "Ray cluster (host:6379, auto) to export on as tasks; default: a local Ray for a big run's export, "
        "none for a small one."))] = None,
) -> int:
    """Copy OUTPUT's ok images with every label, setting and score column into DEST as a dataset with a card
    (README.md), for `datasets.load_dataset` or the Hub; failed rows are left out."""
    from sdbatch.output.export import format_named
    from sdbatch.output.export.source import results_schema
    from sdbatch.store import open_store

    format_named(format)  # an unknown format refused before anything is read
    s3 = s3_settings(s3_endpoint)
    store, target = open_store(output, s3), open_store(dest, s3)
    expression = None
    if where is not None:
        expression = _where_expression()(where, results_schema(store))
    from sdbatch.run.export import export_output

    summary = export_output(store, target, format, expression, rows_per_file, address)
    console = Console()
    console.print(f"{summary.rows} images exported as {summary.format} to {escape(summary.dest)} "
                  f"({len(summary.files)} data files, {summary.bytes / 1e6:.1f} MB, card {summary.card})",
                  highlight=False)
    left = [f"{summary.rows_failed} failed"]
    if where is not None:
        left.append(f"{summary.rows_filtered} left out by --where")
    if summary.images_missing:
        left.append(f"{summary.images_missing} whose image is missing from the output")
    console.print(f"of {summary.rows_seen} committed rows: {', '.join(left)}", highlight=False)
    return 0


def _where_expression():
    """The SQL-like condition's compiler; refused with a clear message where this sdbatch has none yet."""
    try:
        from sdbatch.output.where import where_expression
    except ModuleNotFoundError as exc:
        if exc.name != WHERE_MODULE:
            raise
        raise UsageError("--where is not supported by this version of sdbatch; export every row and filter "
                         "with datasets' Dataset.filter() afterwards") from exc
    return where_expression
