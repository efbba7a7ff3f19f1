"""The run's console events: what the dispatcher says reaches the terminal as written."""

import io

from rich.console import Console

from sdbatch.cli.progress import RunProgress


def test_a_waiting_message_quoting_ray_log_lines_is_printed_as_written():
    out = io.StringIO()
    progress = RunProgress(Console(file=out, width=400), rows_total=4, rows_done=0)
    message = ("the private Ray's node died (its raylet is gone: Last 20 lines of the Raylet logs: "
               "[2026-12-02 23:10:05,123 I 1 1] [/tmp/ray/session_1/logs] [bold] [state-dump] :cat:)")
    progress.waiting(message)  # unescaped, "[/tmp/...]" is a closing tag that matches nothing: MarkupError
    assert message in out.getvalue()
