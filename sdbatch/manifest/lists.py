"""List columns (LoRAs, ControlNets) taken apart into entries and put back together with Arrow kernels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.manifest.columns import Column, arange, constant, one_chunk

Resolve = Callable[[str], tuple[str | None, str | None]]  # reference -> (resolved, None) or (None, problem)


@dataclass(frozen=True)
class Entries:
    """A list column taken apart: entries per row (0 for null), each entry's row, the entries in row order."""

    counts: pa.Array
    rows: pa.Array
    values: pa.Array


def is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)


def is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)


def offsets_of(counts: pa.Array) -> pa.Array:
    return pa.concat_arrays([pa.array([0], pa.int32()), pc.cumulative_sum(counts).cast(pa.int32())])


def entries_of(column: Column) -> Entries:
    """The column must be a list type; null rows become empty lists."""
    column = one_chunk(column)
    counts = pc.fill_null(pc.list_value_length(column), 0).cast(pa.int64())
    values = pc.list_flatten(column)
    # list_parent_indices counts what a null row hides and list_flatten does not: rebuild without those.
    rows = pc.list_parent_indices(pa.ListArray.from_arrays(offsets_of(counts), values)).cast(pa.int64())
    return Entries(counts, rows, values)


def struct_field(values: pa.Array, name: str) -> pa.Array | None:
    """A struct field with the struct's own nulls applied, or None if there is no such field."""
    if not pa.types.is_struct(values.type) or values.type.get_field_index(name) < 0:
        return None
    return pc.struct_field(values, name)


def by_distinct(values: pa.Array, resolve: Resolve) -> tuple[pa.Array, pa.Array]:
    """(resolved, failed) per value, calling resolve once per distinct value; a null gives (null, False)."""
    distinct = pc.unique(values).drop_null()
    results = [resolve(value) for value in distinct.to_pylist()]
    resolved = pa.array([r for r, _ in results], pa.string())
    failed = pa.array([p is not None for _, p in results], pa.bool_())
    index = pc.index_in(values, value_set=distinct)
    return pc.take(resolved, index), pc.fill_null(pc.take(failed, index), False)


def rows_of(entries: Entries, mask: pa.Array) -> list[int]:
    """The rows (ascending, once each) that hold an entry where mask is true."""
    return pc.unique(pc.filter(entries.rows, mask)).to_pylist()


def row_mask(num_rows: int, rows: list[int]) -> pa.Array:
    return pc.is_in(arange(0, num_rows), value_set=pa.array(rows, pa.int64()))


def assemble(num_rows: int, list_type: pa.DataType, entries: Entries | None, values: pa.Array | None,
             py_rows: list[int], py_lists: list[list[dict]]) -> pa.Array:
    """A list per row: py_lists at py_rows (ascending), the other rows' entries from `values` (one per entry
    of `entries`), and empty lists for rows with neither."""
    item = list_type.value_type
    if entries is None:
        entries = Entries(constant(0, pa.int64(), num_rows), pa.array([], pa.int64()), pa.array([], item))
        values = entries.values
    if values is None:  # every entry is in py_rows
        values = pa.nulls(len(entries.rows), item)
    counts = entries.counts
    if py_rows:
        at = pa.array(py_rows, pa.int64())
        counts = pc.replace_with_mask(counts, row_mask(num_rows, py_rows),
                                      pa.array([len(x) for x in py_lists], pa.int64()))
        keep = pc.invert(pc.is_in(entries.rows, value_set=at))
        rows = pa.concat_arrays([pc.filter(entries.rows, keep),
                                 pa.array([n for n, x in zip(py_rows, py_lists) for _ in x], pa.int64())])
        merged = pa.concat_arrays([pc.filter(values, keep).cast(item),
                                   pa.array([e for x in py_lists for e in x], item)])
        values = pc.take(merged, pc.sort_indices(rows))  # stable: each row's entries keep their order
    return pa.ListArray.from_arrays(offsets_of(counts), values.cast(item), type=list_type)
