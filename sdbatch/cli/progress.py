"""Progress on the terminal: a rich bar of rows done/total, images/s, ETA and failures, plus events."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from sdbatch.tasks import ShardResult


class RunProgress:
    """Receives the dispatcher's events and shows them; also the run's rendered/adopted tallies."""

    def __init__(self, console: Console, rows_total: int, rows_done: int):
        self.console = console
        self.started = time.monotonic()  # reset on __enter__, once the actors are being started
        self.rendered = self.adopted = self.failed = 0
        self.progress = Progress(
            TextColumn("[bold]rendering"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.2f} img/s"), TextColumn("failed {task.fields[failed]}"),
            TimeRemainingColumn(), console=console, transient=False,
            # Rows arrive a shard at a time, seconds apart: 10 redraws a second would only take CPU
            # from a local render.
            refresh_per_second=2,
        )
        self.task = self.progress.add_task("rows", total=rows_total, completed=rows_done, rate=0.0, failed=0)

    def __enter__(self) -> RunProgress:
        self.started = time.monotonic()
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def shard_done(self, result: ShardResult) -> None:
        self.rendered += result.rendered
        self.adopted += result.adopted
        self.failed += result.rows_failed
        rate = self.rendered / max(time.monotonic() - self.started, 1e-9)
        self.progress.update(self.task, advance=result.rows_ok + result.rows_failed, rate=rate,
                             failed=self.failed)
        if not result.committed:
            self.console.print(f"shard {result.shard_id}: committed by another attempt; kept theirs")

    def shard_retry(self, shard_id: str, error: str) -> None:
        self.console.print(f"[yellow]shard {shard_id} will be retried[/]: {escape(error)}", highlight=False)

    def shard_gave_up(self, shard_id: str, error: str) -> None:
        self.console.print(f"[red]shard {shard_id} gave up after its retry budget[/]: {escape(error)}",
                           highlight=False)

    def model_failed(self, model: str, error: str) -> None:
        self.console.print(f"[red]model {model} cannot be loaded; its shards are given up, the other models' "
                           f"go on (fix it, then rerun to render them)[/]: {escape(error)}", highlight=False)

    def actor_lost(self, actor: str, error: str) -> None:
        self.console.print(f"[yellow]{actor} lost ({escape(error)}); replacing it and requeueing its shards[/]")

    def waiting(self, message: str) -> None:
        # As written: the message may quote Ray's own text (a dead node's last raylet log lines), whose brackets
        # would be read as markup and whose :words: as emoji.
        self.console.print(f"[yellow]{escape(message)}[/]", highlight=False, emoji=False)
