"""`sdbatch models`: offline models for demos and tests."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Models sdbatch can build offline.", no_args_is_help=True)


@app.command("tiny")
def tiny(directory: Path = typer.Argument(..., help="Folder to write the model into.")) -> None:
    """Write a tiny random-weight SD1.5-style diffusers model (no download)."""
    from sdbatch.render.tiny.build import write_tiny_model

    path = write_tiny_model(directory)
    typer.echo(f"tiny SD1.5-style model in {path} (use it as --model {path})")
