"""A manifest made readable for the checks: one column per name, plain string types, text that is UTF-8."""

from __future__ import annotations

import pyarrow as pa

from sdbatch.manifest.problems import Problems, shown

TEXT_FIX = "write the column as text (decode bytes with errors='replace' before writing)"


def readable(table: pa.Table, problems: Problems) -> pa.Table:
    """The table with dictionary-encoded and view columns as plain ones; a name used twice or text that is not
    UTF-8 is refused (every later check reads names and text, and would crash on either)."""
    names = table.column_names
    for name in dict.fromkeys(n for n in names if names.count(n) > 1):
        problems.add(name, None, f"appears {names.count(name)} times in the file's schema; keep one column per name")
    problems.raise_if()
    columns = []
    for name, column in zip(names, table.columns):
        with problems.stage(name):
            column = plain(column)
            _check_text(name, column, problems)
        columns.append(column)
    problems.raise_if()
    return pa.Table.from_arrays(columns, names=names)


def plain(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """pandas' `category` (dictionary) and Arrow's view types read as the values they hold."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        return plain(column.cast(kind.value_type))
    if pa.types.is_string_view(kind):
        return column.cast(pa.string())
    if pa.types.is_binary_view(kind):
        return column.cast(pa.binary())
    return column


def _check_text(name: str, column: pa.ChunkedArray, problems: Problems) -> None:
    try:
        column.validate(full=True)
        return
    except pa.ArrowInvalid as exc:
        reason = str(exc)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        problems.add(name, None, f"holds values Arrow cannot read ({shown(reason, 200)}); {TEXT_FIX}")
        return
    for n, raw in _bad_text(column):
        problems.report(name, n, f"is not UTF-8 text (bytes {shown(raw, 60)}); {TEXT_FIX}")


def _bad_text(column: pa.ChunkedArray):
    """(row, bytes) of each value that is not UTF-8: read as bytes, decoded one by one (only for a bad column)."""
    row = 0
    for chunk in column.chunks:
        for raw in chunk.cast(pa.large_binary() if pa.types.is_large_string(chunk.type) else pa.binary()).to_pylist():
            if raw is not None:
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    yield row, raw
            row += 1
