"""Manifest problems: each names its column, row and fix; all are counted, the first few are spelled out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from sdbatch.errors import ManifestError

MAX_LISTED_PROBLEMS = 10


@dataclass(frozen=True)
class Problem:
    column: str
    row: str | None  # "row id 'x' (row 3)" or None for a whole-column problem
    message: str

    def __str__(self) -> str:
        where = f"column '{self.column}'" + (f", {self.row}" if self.row else "")
        return f"{where}: {self.message}"


class Problems:
    """Counts every problem but builds messages only for those the error will show, so a manifest where
    millions of rows share one mistake fails as fast as it would pass."""

    def __init__(self, rows: int, first_row: int = 0):
        self.rows = rows
        self.first_row = first_row
        self.count = 0
        self.listed: list[Problem] = []
        self.ids: pa.Array | pa.ChunkedArray | None = None  # set once the ids are known to be valid

    @property
    def room(self) -> int:
        return max(0, MAX_LISTED_PROBLEMS - len(self.listed))

    def where(self, n: int) -> str:
        return f"row id '{self.ids[n].as_py()}' (row {n + self.first_row})"

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
        shown = rows.slice(0, self.room).to_pylist()
        self.count += len(rows)
        self.listed.extend(Problem(column, self.where(n), message(n)) for n in shown)

    def raise_if(self) -> None:
        raise_if(self.listed, self.rows, self.count)


def raise_if(problems: list[Problem], rows: int, count: int | None = None) -> None:
    count = len(problems) if count is None else count
    if not count:
        return
    shown = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED_PROBLEMS])
    more = count - MAX_LISTED_PROBLEMS
    tail = f"\n  ... and {more} more problem(s)" if more > 0 else ""
    raise ManifestError(f"manifest has {count} problem(s) in {rows} rows:\n{shown}{tail}")
