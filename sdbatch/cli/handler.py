"""The one error handler: known errors become a one-paragraph message and their exit code (2: fix the input)."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.text import Text

from sdbatch.errors import UserFacing

# A missing local file (a manifest, a job file) is the user's to fix too, and says which.
USAGE_ERRORS = (UserFacing, FileNotFoundError)


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
    except USAGE_ERRORS as exc:
        Console(stderr=True).print(Text("error: ", style="bold red") + Text(str(exc)))
        return getattr(exc, "exit_code", 2)
    return code if isinstance(code, int) else 0
