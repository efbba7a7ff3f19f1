"""The ControlNet columns: the `controlnets` list, or the simple controlnet / control_image / controlnet_scale."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.manifest.columns import one_chunk, rows_where
from sdbatch.manifest.lists import (
    Entries,
    assemble,
    by_distinct,
    entries_of,
    is_list,
    is_number,
    is_text,
    offsets_of,
    rows_of,
    struct_field,
)
from sdbatch.manifest.problems import shown, unexpected
from sdbatch.manifest.references import LIST_FIX, Report, Resolver, number, number_or

CONTROLNET_TYPE = pa.list_(pa.struct([("model", pa.string()), ("image", pa.string()), ("scale", pa.float64())]))
SIMPLE_CONTROLNET_COLUMNS = ("controlnet", "control_image", "controlnet_scale")


def normalize_controlnets(table: pa.Table, resolver: Resolver, report: Report) -> pa.Array:
    """A CONTROLNET_TYPE array from the `controlnets` list column or the simple single-ControlNet columns."""
    names = table.column_names
    simple = [c for c in SIMPLE_CONTROLNET_COLUMNS if c in names]
    if "controlnets" in names and simple:
        report(simple[0], -1, "use either the 'controlnets' list column or the simple columns, not both")
        return pa.nulls(table.num_rows, CONTROLNET_TYPE)
    listed = table.column("controlnets") if "controlnets" in names else _from_simple(table, report)
    if listed is not None and not is_list(listed.type):
        if not pa.types.is_null(listed.type):
            report("controlnets", -1, f"has type {listed.type}; use {LIST_FIX['controlnets']}")
        listed = None
    entries: Entries | None = None
    values = None
    py_rows: list[int] = []
    if listed is not None:
        entries = entries_of(listed)
        values, failed = _resolved_controlnets(entries.values, resolver)
        py_rows = rows_of(entries, failed)
    rows = pc.take(listed, pa.array(py_rows, pa.int64())).to_pylist() if py_rows else []
    py_lists = [_python_controlnets(n, row, resolver, report) for n, row in zip(py_rows, rows)]
    return assemble(table.num_rows, CONTROLNET_TYPE, entries, values, py_rows, py_lists)


def _from_simple(table: pa.Table, report: Report) -> pa.Array | None:
    """The simple columns as a list column: one entry where `controlnet` is set, none elsewhere; an image or a
    scale on a row without a ControlNet is refused rather than dropped."""
    present = [c for c in SIMPLE_CONTROLNET_COLUMNS if c in table.column_names]
    parts = [one_chunk(table.column(c)) if c in present else pa.nulls(table.num_rows)
             for c in SIMPLE_CONTROLNET_COLUMNS]
    kinds = (is_text, is_text, is_number)
    wrong = [c for c, part, ok in zip(SIMPLE_CONTROLNET_COLUMNS, parts, kinds) if c in present and not ok(part.type)]
    for name in wrong:
        expected = "a number" if name.endswith("scale") else "text"
        report(name, -1, f"has type {table.column(name).type}; expected {expected}")
    if wrong or not present:
        return None
    model, image = (part.cast(pa.string()) for part in parts[:2])
    has = pc.fill_null(pc.not_equal(model, ""), False)
    for name, part in zip(SIMPLE_CONTROLNET_COLUMNS[1:], (image, parts[2])):
        given = pc.is_valid(part) if name.endswith("scale") else pc.fill_null(pc.not_equal(part, ""), False)
        for n in rows_where(pc.and_not(given, has)).to_pylist():
            report(name, n, f"is set but controlnet is not; name the ControlNet in a 'controlnet' column, or drop "
                            f"{name}")
    entries = pc.filter(pa.StructArray.from_arrays([model, image, parts[2]], names=["model", "image", "scale"]), has)
    return pa.ListArray.from_arrays(offsets_of(has.cast(pa.int64())), entries)


def _resolved_controlnets(values: pa.Array, resolver: Resolver) -> tuple[pa.Array | None, pa.Array]:
    """Resolved (model, image, scale) entries and which entries failed; entries of unexpected types fail here
    and are judged in Python."""
    model, image, scale = (struct_field(values, name) for name in ("model", "image", "scale"))
    if model is None or image is None or not (is_text(model.type) and is_text(image.type)) or (
            scale is not None and not is_number(scale.type)):
        return None, pa.repeat(pa.scalar(True), len(values))
    model, image = model.cast(pa.string()), image.cast(pa.string())
    scales = number_or(scale, 1.0, len(values))
    usable = pc.and_(pc.and_(pc.not_equal(model, ""), pc.not_equal(image, "")),
                     pc.and_(pc.invert(pc.less(scales, 0.0)), pc.is_finite(scales)))
    usable = pc.fill_null(usable, False)
    unset = pa.scalar(None, pa.string())
    models, model_failed = by_distinct(pc.if_else(usable, model, unset), resolver.controlnet)
    images, image_failed = by_distinct(pc.if_else(usable, image, unset), resolver.image)
    entries = pa.StructArray.from_arrays([models, images, scales], names=["model", "image", "scale"])
    return entries, pc.or_(pc.invert(usable), pc.or_(model_failed, image_failed))


def _python_controlnets(n: int, row: Any, resolver: Resolver, report: Report) -> list[dict]:
    try:
        return [x for x in (_controlnet_entry(entry, n, resolver, report) for entry in row or []) if x]
    except Exception as exc:  # noqa: BLE001 - a row no check foresaw is refused with its place
        report("controlnets", n, unexpected(exc))
        return []


def _controlnet_entry(entry: Any, n: int, resolver: Resolver, report: Report) -> dict | None:
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) and entry[k] for k in ("model", "image")):
        report("controlnets", n, "each ControlNet needs a 'model' and an 'image' (and optionally a 'scale'); "
                                 f"got {shown(entry)}")
        return None
    scale, problem = number(entry.get("scale"), 1.0, "scale", "0.8")
    if problem or scale < 0:
        report("controlnets", n, problem or f"scale {scale} is negative; use a value >= 0")
        return None
    model, problem = resolver.controlnet(entry["model"])
    image, image_problem = resolver.image(entry["image"])
    for issue in (problem, image_problem):
        if issue:
            report("controlnets", n, issue)
    return None if problem or image_problem else {"model": model, "image": image, "scale": scale}
