"""`sdbatch models`: offline models for demos and tests."""

from __future__ import annotations

import enum
from pathlib import Path

import typer

# Cheap to import: build.py reaches diffusers only when a model is built.
from sdbatch.render.tiny.build import FAMILIES

app = typer.Typer(help="Models sdbatch can build offline.", no_args_is_help=True)
# An Enum is how typer offers choices; built from FAMILIES so a new tiny family is offered at once.
Family = enum.Enum("Family", {name: name for name in FAMILIES}, type=str)


@app.command("tiny")
def tiny(directory: Path = typer.Argument(..., help="Folder to write the model into."),
         family: Family = typer.Option("sd15", help="Model family: its pipeline, text encoders and denoiser.")
         ) -> None:
    """Write a tiny random-weight diffusers model of a family (no download)."""
    from sdbatch.render.tiny.build import write_tiny_model

    path = write_tiny_model(directory, family=family.value)
    typer.echo(f"tiny {family.value} model in {path} (use it as --model {path})")
