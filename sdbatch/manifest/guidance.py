"""Columns of the families with a T5 encoder and distilled guidance: true_cfg_scale and max_sequence_length, written
only where a row or the job sets them; and each family's own guidance_scale where neither sets one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.family import Family
from sdbatch.manifest import columns as cols
from sdbatch.manifest.columns import rows_where
from sdbatch.manifest.problems import Problems
from sdbatch.settings import RowDefaults

# Written by normalize only where the manifest has the column or the job a default for it.
GUIDANCE_COLUMNS = ("true_cfg_scale", "max_sequence_length")
# diffusers' SD3 and FLUX pipelines refuse a longer T5 sequence; T5's own limit is the same.
MAX_SEQUENCE_LENGTH = 512
# Above 1 the call runs the transformer twice per step, the second time on the negative prompt.
TRUE_CFG_OFF = 1.0


def guidance_columns(table: pa.Table, columns: dict[str, Any], defaults: RowDefaults, problems: Problems) -> None:
    """Add true_cfg_scale and max_sequence_length where the manifest has the column or the job a default (so a
    manifest that never names them normalizes, and fingerprints, as before they existed)."""
    if "true_cfg_scale" in table.column_names or defaults.true_cfg_scale is not None:
        columns["true_cfg_scale"] = _true_cfg(table, defaults.true_cfg_scale, problems)
    if "max_sequence_length" in table.column_names or defaults.max_sequence_length is not None:
        columns["max_sequence_length"] = cols.ints(
            table, "max_sequence_length", defaults.max_sequence_length, problems, low=1, high=MAX_SEQUENCE_LENGTH,
            fix=f"use 1 to {MAX_SEQUENCE_LENGTH} T5 tokens, or null for the family's default (FLUX 512, SD3 256)")


def _true_cfg(table: pa.Table, default: float | None, problems: Problems) -> Any:
    x = cols.optional_floats(table, "true_cfg_scale", problems)
    if x is None:
        return cols.constant(default, pa.float64(), table.num_rows)
    bad = pc.or_(pc.less(x, TRUE_CFG_OFF), pc.invert(pc.is_finite(x)))
    problems.add_rows("true_cfg_scale", rows_where(bad), lambda n: (
        f"{x[n].as_py()} is {'under 1' if x[n].as_py() < 1 else 'not finite'}; use 1 (off: distilled guidance "
        "alone) or more (e.g. 4 with a negative prompt)"))
    return pc.if_else(pc.fill_null(bad, False), pa.scalar(default, pa.float64()), x)


def family_guidance(table: pa.Table, columns: dict[str, Any], defaults: RowDefaults,
                    found: Mapping[str, Family | None]) -> None:
    """Rows that set no guidance_scale, in a job that keeps the built-in default, get their family's own (FLUX.1-dev
    is used at 3.5, not SD's 7.5). `found`: each model reference's family (models.model_families)."""
    if defaults.guidance_scale != RowDefaults.guidance_scale or "model" not in columns:
        return
    unset = _unset(table, "guidance_scale")
    models, guidance = columns["model"], columns["guidance_scale"]
    for reference, family in found.items():
        if family is not None and family.guidance_scale is not None:
            mine = pc.and_(pc.fill_null(pc.equal(models, reference), False), unset)
            guidance = pc.if_else(mine, pa.scalar(family.guidance_scale, pa.float64()), guidance)
    columns["guidance_scale"] = guidance


def _unset(table: pa.Table, name: str) -> Any:
    """Where a numeric column is missing, null or NaN (pandas' missing float); everywhere when it is absent."""
    if name not in table.column_names:
        return pa.repeat(pa.scalar(True), table.num_rows)
    column = table.column(name)
    missing = pc.is_null(column)
    return pc.or_(missing, pc.fill_null(pc.is_nan(column), False)) if pa.types.is_floating(column.type) else missing
