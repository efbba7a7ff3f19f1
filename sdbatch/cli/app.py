"""Entry point: assembles the command groups into one typer app."""

from __future__ import annotations

import sys

import typer

from sdbatch.cli import manifest_cmd, models_cmd, run_cmd
from sdbatch.cli.errors import run_with_errors

app = typer.Typer(help="Render very large batches of Stable Diffusion images on Ray, resumably.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(manifest_cmd.app, name="manifest")
app.add_typer(models_cmd.app, name="models")
run_cmd.register(app)


def main() -> None:
    sys.exit(run_with_errors(app))
