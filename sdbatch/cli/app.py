"""Entry point: assembles the command groups into one typer app."""

from __future__ import annotations

import logging
import os
import sys

import typer

from sdbatch.cli import export_cmd, jobs_cmd, manifest_cmd, models_cmd, report_cmd, run_cmd, score_cmd
from sdbatch.cli.handler import run_with_errors

app = typer.Typer(help="Render very large batches of Stable Diffusion images on Ray, resumably.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(manifest_cmd.app, name="manifest")
app.add_typer(models_cmd.app, name="models")
run_cmd.register(app)
jobs_cmd.register(app)
report_cmd.register(app)
score_cmd.register(app)
export_cmd.register(app)


def main() -> None:
    code = run_with_errors(app)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    # Skip interpreter teardown: pyarrow's thread pool can abort() while native modules unload
    # (apache/arrow#34314), which would turn a clean exit code into 134 now and then.
    os._exit(code)
