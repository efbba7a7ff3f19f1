"""The manifest's scalar columns checked and filled with Arrow kernels; Python only for the rows that fail."""

from __future__ import annotations

import hashlib
import re
import sys
from concurrent.futures import Executor

import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.manifest.problems import Problems, shown

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
INT64_MAX = 2**63 - 1
EXACT_FLOAT = 2**53  # above this a float64 no longer holds every integer
MAX_SIZE = 8192
# What every model's VAE needs (a power of two); a family may need a larger multiple (sdbatch.family).
SIZE_MULTIPLE = 8
SEED_BLOCK = 1 << 20
# Ids per task when other processes hash: enough tasks for every worker, each worth its pickling.
WORKER_SEED_BLOCK = 1 << 15
# derive_seed reads the digest's first 8 bytes big-endian; Arrow reads buffers in native byte order.
DIGEST_WORD = slice(7, None, -1) if sys.byteorder == "little" else slice(0, 8)

Column = pa.Array | pa.ChunkedArray


def derive_seed(job_seed: int, row_id: str) -> int:
    """A seed from (job seed, id): independent of row order, shard and batch; in [0, 2**63)."""
    digest = hashlib.sha256(f"{job_seed}/{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def derive_seeds(job_seed: int, ids: Column, workers: Executor | None = None) -> pa.Array:
    """derive_seed for every id: the one per-row Python loop left, so it stays tight (and goes a block at a
    time, so the Python objects it makes never pile up); with `workers`, the blocks are hashed in parallel."""
    size = SEED_BLOCK if workers is None else WORKER_SEED_BLOCK
    # The keys are built here, vectorized, and copied compact, so a block pickles only its own bytes.
    keys = [pa.concat_arrays([one_chunk(pc.binary_join_element_wise(f"{job_seed}/", ids.slice(start, size), "")
                                        .cast(pa.binary()))]) for start in range(0, len(ids), size)]
    words = list(workers.map(_seed_words, keys) if workers is not None else map(_seed_words, keys))
    blocks = [_seeds_from_words(w, len(k)) for w, k in zip(words, keys)]
    return pa.concat_arrays(blocks) if blocks else pa.array([], pa.int64())


def _seed_words(keys: pa.Array) -> bytes:
    sha256 = hashlib.sha256
    # Each digest's first 8 bytes as a native uint64 word; then one vectorized shift, not an int per row.
    return b"".join([sha256(key).digest()[DIGEST_WORD] for key in keys.to_pylist()])


def _seeds_from_words(words: bytes, count: int) -> pa.Array:
    values = pa.Array.from_buffers(pa.uint64(), count, [None, pa.py_buffer(words)])
    return pc.shift_right(values, pa.scalar(1, pa.uint64())).cast(pa.int64())


def arange(start: int, count: int) -> pa.Array:
    """start, start + 1, ... as int64, without a Python int per row."""
    if count == 0:
        return pa.array([], pa.int64())
    return pc.add(pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), count)), start - 1)


def one_chunk(values: Column) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def rows_where(mask: Column) -> pa.Array:
    """The positions where mask is true (null counts as false), ascending."""
    return pc.indices_nonzero(pc.fill_null(mask, False))


def normalize_ids(table: pa.Table, problems: Problems, first_row: int = 0,
                  total_rows: int | None = None) -> Column | None:
    if "id" not in table.column_names:
        total = table.num_rows if total_rows is None else total_rows
        width = max(6, len(str(max(total - 1, 0))))
        return pc.utf8_lpad(pc.cast(arange(first_row, table.num_rows), pa.string()), width, "0")
    column = table.column("id")
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            or pa.types.is_integer(column.type)):
        problems.add("id", None, f"has type {column.type}; use strings (or integers)")
        return None
    ids = column.cast(pa.string())
    # RE2's $ is stricter than Python's (no trailing newline), so its misses are only suspects.
    suspect = pc.invert(pc.fill_null(pc.match_substring_regex(ids, ID_PATTERN.pattern), False))
    suspect = pc.or_(suspect, pc.fill_null(pc.match_substring(ids, ".."), False))
    repeated = duplicate_ids(ids)
    if len(repeated):
        suspect = pc.or_(suspect, pc.is_in(ids, value_set=repeated))
    rows = rows_where(suspect)
    _check_ids(rows.to_pylist(), pc.take(ids, rows).to_pylist(), first_row, problems)
    return ids


def duplicate_ids(ids: Column) -> pa.Array:
    """The ids that occur more than once (nulls aside)."""
    if len(ids) < 2 or pc.all(pc.fill_null(pc.greater(ids.slice(1), ids.slice(0, len(ids) - 1)), False)).as_py():
        return pa.array([], ids.type)  # strictly increasing, as generated ids usually are: no hash table needed
    counts = pa.table({"id": ids}).group_by("id").aggregate([("id", "count")])
    return counts.filter(pc.greater(counts["id_count"], 1))["id"].combine_chunks()


def _check_ids(rows: list[int], values: list[str | None], first_row: int, problems: Problems) -> None:
    """Every occurrence of a repeated id is among the rows, so `seen` needs no other."""
    seen: dict[str, int] = {}
    for n, value in zip(rows, values):
        n += first_row
        if value is None:
            problems.add("id", f"row {n}", "is null; give every row an id or drop the column")
        elif not is_valid_id(value):
            problems.add("id", f"row id {shown(value)} (row {n})",
                         "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ without '..' (no '/', spaces, line breaks); "
                         "rename it")
        elif value in seen:
            problems.add("id", f"row id {shown(value)} (row {n})", f"duplicates row {seen[value]}; ids must be unique")
        else:
            seen[value] = n


def is_valid_id(value: str) -> bool:
    """An id that is safe as a file name in every layout: the whole of it matches, and no '..' in it."""
    return bool(ID_PATTERN.fullmatch(value)) and ".." not in value


def typed_column(table: pa.Table, name: str, kind: str, problems: Problems) -> pa.ChunkedArray | None:
    """The column, or None if absent or of the wrong type (a problem is recorded)."""
    if name not in table.column_names:
        return None
    column = table.column(name)
    numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
    text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    if not (pa.types.is_null(column.type) or (text if kind == "string" else numeric)):
        problems.add(name, None, f"has type {column.type}; expected {kind}")
        return None
    return column


def _filled(values: Column, default) -> Column:
    return values if default is None else pc.fill_null(values, default)


def constant(value, kind: pa.DataType, count: int) -> pa.Array:
    """The value of a column the manifest does not have, for every row."""
    return pa.nulls(count, kind) if value is None else pa.repeat(pa.scalar(value, kind), count)


def prompts(table: pa.Table, problems: Problems) -> Column:
    if "prompt" not in table.column_names:
        problems.add("prompt", None, "is missing; add a string column 'prompt' with one prompt per row")
        return pa.nulls(table.num_rows, pa.string())
    column = typed_column(table, "prompt", "string", problems)
    if column is None:
        return pa.nulls(table.num_rows, pa.string())
    values = column.cast(pa.string())
    problems.add_rows("prompt", rows_where(pc.is_null(values)),
                      lambda n: "is null; use '' for an unconditional image")
    return values


def strings(table: pa.Table, name: str, default: str | None, problems: Problems, allowed=None,
            nonempty=False, nonempty_if_set=False) -> Column:
    column = typed_column(table, name, "string", problems)
    if column is None:
        values = constant(default, pa.string(), table.num_rows)
    else:
        values = _filled(column.cast(pa.string()), default)
    masks = []
    if allowed is not None:
        masks.append(pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, value_set=pa.array(allowed)))))
    if nonempty:
        masks.append(pc.fill_null(pc.equal(values, ""), True))
    elif nonempty_if_set:
        masks.append(pc.fill_null(pc.equal(values, ""), False))
    if masks:
        bad = masks[0] if len(masks) == 1 else pc.or_(*masks)
        problems.add_rows(name, rows_where(bad), lambda n: string_problem(
            values[n].as_py(), name, allowed, nonempty, nonempty_if_set))
    return values


def string_problem(value: str | None, name: str, allowed, nonempty: bool, nonempty_if_set: bool) -> str | None:
    if allowed is not None and value is not None and value not in allowed:
        return f"{shown(value)} is not known; use one of {', '.join(allowed)}"
    if (nonempty or (nonempty_if_set and value is not None)) and not value:
        return f"is empty; name a {name} or leave it null for the job's"
    return None


def ints(table: pa.Table, name: str, default: int | None, problems: Problems, low: int | None = None,
         high: int | None = None, fix: str = "") -> Column:
    """int64 values; null, NaN (pandas' missing int) and refused values become the default."""
    column = typed_column(table, name, "int", problems)
    if column is None or pa.types.is_null(column.type):
        return constant(default, pa.int64(), table.num_rows)
    high = INT64_MAX if high is None else min(high, INT64_MAX)  # the output is int64
    present = pc.is_valid(column)
    if pa.types.is_floating(column.type):
        x = column.cast(pa.float64())
        values, usable = _whole_floats(x, low, high)
        present = pc.and_not(present, pc.is_nan(x))
    else:
        values, usable = _whole_ints(column, low, high)
    usable = pc.fill_null(usable, False)
    bad = pc.and_not(present, usable)
    problems.add_rows(name, rows_where(bad), lambda n: int_problem(column[n].as_py(), low, high, fix))
    kept = pc.if_else(usable, values, pa.scalar(None, pa.int64()))
    return _zeros_under_nulls(kept) if default is None else pc.fill_null(kept, default)


def _zeros_under_nulls(values: Column) -> pa.Array:
    """The run fingerprint hashes the bytes under null slots too: make them zeros, as pa.array writes."""
    values = one_chunk(values)
    if not values.null_count:
        return values
    valid, filled = pc.is_valid(values), pc.fill_null(values, 0)
    return pa.Array.from_buffers(pa.int64(), len(values), [valid.buffers()[1], filled.buffers()[1]],
                                 values.null_count)


def _whole_ints(column: pa.ChunkedArray, low: int | None, high: int) -> tuple[Column, Column]:
    usable = None
    if column.type == pa.uint64():
        usable = pc.less_equal(column, pa.scalar(INT64_MAX, pa.uint64()))
        column = pc.if_else(usable, column, pa.scalar(None, pa.uint64()))
    values = column.cast(pa.int64())
    inside = _inside(values, low, high, pa.int64())
    return values, inside if usable is None else pc.and_(usable, inside)


def _whole_floats(x: Column, low: int | None, high: int) -> tuple[Column, Column]:
    whole = pc.and_(pc.is_finite(x), pc.equal(pc.floor(x), x))
    exact = pc.less_equal(pc.abs(x), float(EXACT_FLOAT))
    usable = pc.and_(pc.and_(whole, exact), _inside(x, low, high, pa.float64()))
    # Unusable values are nulled first: the cast refuses fractions, even ones that are dropped.
    return pc.if_else(usable, x, pa.scalar(None, pa.float64())).cast(pa.int64()), usable


def _inside(values: Column, low: int | None, high: int, kind: pa.DataType) -> Column:
    convert = float if pa.types.is_floating(kind) else int
    inside = pc.less_equal(values, pa.scalar(convert(high), kind))
    if low is not None:
        inside = pc.and_(inside, pc.greater_equal(values, pa.scalar(convert(low), kind)))
    return inside


def int_problem(value, low: int | None, high: int | None, fix: str) -> str | None:
    if value is None or value != value:  # NaN: pandas writes missing ints as float NaN
        return None
    if isinstance(value, float) and not value.is_integer():  # not float(v) != int(v): inexact above 2**53
        return f"{value!r} is not a whole number; {fix}"
    if isinstance(value, float) and abs(value) > EXACT_FLOAT:  # e.g. pandas' int column with a missing value
        return (f"{value!r} is a float above 2**53, so its exact value is already lost; write the column as "
                "integers (pandas: dtype 'Int64')")
    if (low is not None and value < low) or (high is not None and value > high):
        return f"{int(value)} is out of range; {fix}"
    return None


def seeds(table: pa.Table, ids: Column, job_seed: int, problems: Problems,
          workers: Executor | None = None) -> Column:
    values = ints(table, "seed", None, problems, low=0, high=INT64_MAX,
                  fix="use an integer in [0, 2**63) or null to derive one")
    missing = pc.is_null(values)
    rows = pc.indices_nonzero(missing)
    if len(rows) == table.num_rows:
        return derive_seeds(job_seed, ids, workers)
    if not len(rows):
        return values
    derived = derive_seeds(job_seed, pc.take(ids, rows), workers)
    return pc.replace_with_mask(one_chunk(values), one_chunk(missing), derived)


def optional_floats(table: pa.Table, name: str, problems: Problems) -> Column | None:
    """The column as float64 with NaN as null (pandas writes a missing float as NaN); None if it is absent.
    Infinities are kept: each caller's range check refuses them."""
    column = typed_column(table, name, "float", problems)
    if column is None or pa.types.is_null(column.type):
        return None
    x = column.cast(pa.float64(), safe=False)
    return pc.if_else(pc.is_nan(x), pa.scalar(None, pa.float64()), x)


def floats(table: pa.Table, name: str, default: float, problems: Problems) -> Column:
    x = optional_floats(table, name, problems)
    if x is None:
        return constant(float(default), pa.float64(), table.num_rows)
    bad = pc.or_(pc.less(x, 0.0), pc.invert(pc.is_finite(x)))
    problems.add_rows(name, rows_where(bad), lambda n: (
        f"{x[n].as_py()} is {'negative' if x[n].as_py() < 0 else 'not finite'}; use a value >= 0 (e.g. 7.5)"))
    return pc.if_else(pc.fill_null(bad, True), pa.scalar(float(default), pa.float64()), x)


def sizes(table: pa.Table, name: str, default: int | None, problems: Problems) -> Column:
    values = ints(table, name, default, problems, low=SIZE_MULTIPLE, high=MAX_SIZE,
                  fix=f"use a multiple of {SIZE_MULTIPLE} between {SIZE_MULTIPLE} and {MAX_SIZE}")

    def message(n: int) -> str:
        value = values[n].as_py()
        low = value - value % SIZE_MULTIPLE
        return f"{value} is not a multiple of {SIZE_MULTIPLE}; use {low} or {low + SIZE_MULTIPLE}"

    if values.null_count < len(values):
        problems.add_rows(name, rows_where(pc.not_equal(pc.bit_wise_and(values, SIZE_MULTIPLE - 1), 0)), message)
    return values
