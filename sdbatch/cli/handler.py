"""The one error handler: known errors become a one-paragraph message and their exit code (2: fix the input);
and the one way warnings about accepted input are said."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.text import Text

from sdbatch.errors import UserFacing
from sdbatch.manifest.problems import Notes, clipped

# A missing local file (a manifest, a job file) is the user's to fix too, and says which.
USAGE_ERRORS = (UserFacing, FileNotFoundError)


def run_with_errors(app: Callable[..., int | None]) -> int:
    """Run the typer app; usage and validation errors exit 2 with a message and no traceback."""
    try:
        code = app(standalone_mode=False)
    except _aborts():
        Console(stderr=True).print("aborted")
        return 130
    except _command_line_errors() as exc:  # an unknown option, a missing argument
        exc.show()
        return getattr(exc, "exit_code", 2)
    except USAGE_ERRORS as exc:
        # A message may quote a manifest's or a store's text: its control characters must not reach the terminal.
        Console(stderr=True).print(Text("error: ", style="bold red") + Text(clipped(str(exc), 20_000)))
        return getattr(exc, "exit_code", 2)
    return code if isinstance(code, int) else 0


def _aborts() -> tuple[type[BaseException], ...]:
    import click
    import typer

    return click.exceptions.Abort, typer.Abort


def _command_line_errors() -> tuple[type[BaseException], ...]:
    """Click's usage errors, and those of the click that newer typer releases carry inside them."""
    import click
    import typer

    vendored = getattr(getattr(typer, "exceptions", None), "TyperException", click.exceptions.ClickException)
    return click.exceptions.ClickException, vendored


def print_notes(notes: Notes, console: Console | None = None) -> None:
    """Each kind of warning once, with its count and a few examples."""
    console = console or Console(stderr=True)
    for line in notes.lines():
        console.print(Text("warning: ", style="bold yellow") + Text(line))
