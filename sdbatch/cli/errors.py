"""The one error handler: known errors become a one-paragraph message and exit code 2."""

from __future__ import annotations

import sys
from typing import Callable

from rich.console import Console
from rich.text import Text

from sdbatch.driver import UsageError
from sdbatch.manifest import ManifestError
from sdbatch.output import RunMismatch
from sdbatch.spec import SpecError
from sdbatch.storage import StoreError


def _usage_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ManifestError, SpecError, StoreError, RunMismatch, UsageError,
                                         FileNotFoundError]
    # Imported lazily: they live beside torch and ray, which a quick `manifest validate` never loads.
    if "sdbatch.render.loading" in sys.modules:
        errors.append(sys.modules["sdbatch.render.loading"].ModelLoadError)
    if "sdbatch.engine.scheduler" in sys.modules:
        errors.append(sys.modules["sdbatch.engine.scheduler"].FatalRunError)
    if "sdbatch.engine.jobs" in sys.modules:
        errors.append(sys.modules["sdbatch.engine.jobs"].JobsError)
    return tuple(errors)


def run_with_errors(app: Callable[..., int | None]) -> int:
    """Run the typer app; usage and validation errors exit 2 with a message and no traceback."""
    import click

    try:
        code = app(standalone_mode=False)
    except click.exceptions.Abort:
        Console(stderr=True).print("aborted")
        return 130
    except click.exceptions.ClickException as exc:
        exc.show()
        return 2
    except Exception as exc:
        if isinstance(exc, _usage_errors()):
            Console(stderr=True).print(Text("error: ", style="bold red") + Text(str(exc)))
            return 2
        raise
    return code if isinstance(code, int) else 0
