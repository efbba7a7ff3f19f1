"""Manifest problems: each names its column, row and fix; all are counted, the first few are spelled out."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from sdbatch.errors import ManifestError, UserFacing

MAX_LISTED_PROBLEMS = 10
# A value quoted in a message: enough to recognise it, short enough that a megabyte prompt is one line.
QUOTED_CHARS = 80
# A whole message: room for a quoted value or two, the context and the fix.
MESSAGE_CHARS = 600
# Examples a warning shows of what it counts.
NOTE_EXAMPLES = 3
# C0/C1 controls and the bidirectional overrides: raw on a terminal they move the cursor, recolour or hide text.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def escaped(text: str) -> str:
    """Text safe to print: control characters as escapes (newlines and tabs too, inside a one-line message)."""
    return _CONTROLS.sub(lambda m: m.group(0).encode("unicode_escape").decode(), text).replace("\n", "\\n")


def shown(value: object, limit: int = QUOTED_CHARS) -> str:
    """A value as a message quotes it: repr'd (controls escaped), cut in the middle when long."""
    text = repr(value)
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]} ({len(str(value))} characters)"


def clipped(message: str, limit: int = MESSAGE_CHARS) -> str:
    """A message escaped and kept to about `limit` characters; its end (the fix) is kept."""
    message = "\n".join(escaped(line) for line in message.split("\n"))
    if len(message) <= limit:
        return message
    keep = (limit - 5) // 2
    return f"{message[:keep]} ... {message[-keep:]}"


@dataclass(frozen=True)
class Problem:
    column: str
    row: str | None  # "row id 'x' (row 3)" or None for a whole-column problem
    message: str

    def __str__(self) -> str:
        where = f"column {shown(self.column)}" + (f", {self.row}" if self.row else "")
        return clipped(f"{where}: {self.message}")


def unexpected(exc: BaseException) -> str:
    """The message for an error a check did not foresee: the value is refused, never a traceback."""
    return (f"could not be checked ({type(exc).__name__}: {clipped(str(exc), 200)}); fix or drop the value, and "
            "please report it to sdbatch with this row")


class Problems:
    """Counts every problem but builds messages only for those the error will show, so a manifest where
    millions of rows share one mistake fails as fast as it would pass."""

    def __init__(self, rows: int, first_row: int = 0):
        self.rows = rows
        self.first_row = first_row
        self.count = 0
        self.listed: list[Problem] = []
        self.ids: pa.Array | pa.ChunkedArray | None = None  # set once the ids are known to be valid
        self.crashed = False  # a check met input it did not foresee: what builds on it cannot run

    @property
    def room(self) -> int:
        return max(0, MAX_LISTED_PROBLEMS - len(self.listed))

    def where(self, n: int) -> str:
        if self.ids is None:
            return f"row {n + self.first_row}"
        return f"row id {shown(self.ids[n].as_py())} (row {n + self.first_row})"

    def add(self, column: str, row: str | None, message: str) -> None:
        self.count += 1
        if self.room:
            self.listed.append(Problem(column, row, message))

    def report(self, column: str, n: int, message: str) -> None:
        """A problem at row position n of this table (-1: the whole column)."""
        self.count += 1
        if self.room:
            self.listed.append(Problem(column, self.where(n) if n >= 0 else None, message))

    def add_rows(self, column: str, rows: pa.Array, message: Callable[[int], str]) -> None:
        """One problem per row position in `rows` (ascending); message(n) is called only for those shown."""
        shown_rows = rows.slice(0, self.room).to_pylist()
        self.count += len(rows)
        self.listed.extend(Problem(column, self.where(n), self._message(message, n)) for n in shown_rows)

    @staticmethod
    def _message(message: Callable[[int], str], n: int) -> str:
        try:
            return message(n)
        except Exception as exc:  # noqa: BLE001 - the row is refused either way; its message must not crash
            return unexpected(exc)

    @contextlib.contextmanager
    def guard(self, column: str, n: int = -1) -> Iterator[None]:
        """Run a check; an error it did not foresee becomes a problem of its column (and row), not a traceback."""
        try:
            yield
        except UserFacing:  # an error already written for the user (a model no family claims) says it best
            raise
        except Exception as exc:  # noqa: BLE001 - any input a check chokes on is refused with its place
            self.crashed = True
            self.report(column, n, unexpected(exc))

    @contextlib.contextmanager
    def stage(self, column: str) -> Iterator[None]:
        """A stage of the checks that the next ones build on: an error it did not foresee refuses the manifest
        at once, with what was found so far."""
        with self.guard(column):
            yield
        if self.crashed:
            self.raise_if()

    def raise_if(self) -> None:
        raise_if(self.listed, self.rows, self.count)


def raise_if(problems: list[Problem], rows: int, count: int | None = None) -> None:
    count = len(problems) if count is None else count
    if not count:
        return
    listed = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED_PROBLEMS])
    more = count - MAX_LISTED_PROBLEMS
    tail = f"\n  ... and {more} more problem(s)" if more > 0 else ""
    raise ManifestError(f"manifest has {count} problem(s) in {rows} rows:\n{listed}{tail}")


@dataclass
class Notes:
    """Warnings about a manifest that is accepted: counted across every chunk, a few examples kept, said once."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, what: str, count: int, examples: list[str]) -> None:
        if not count:
            return
        self.counts[what] = self.counts.get(what, 0) + count
        kept = self.examples.setdefault(what, [])
        kept.extend(clipped(e, 200) for e in examples[:NOTE_EXAMPLES - len(kept)])

    def lines(self) -> list[str]:
        """One line per kind of warning: what, how many rows, and its examples."""
        return [f"{what.format(count=count)}" + "".join(f"\n    e.g. {e}" for e in self.examples[what])
                for what, count in self.counts.items()]
