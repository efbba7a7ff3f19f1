"""Manifest columns of image-conditioned rows: init and mask images, strength, the hires pass; the pipeline kind."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.manifest import columns as cols
from sdbatch.manifest.columns import Column, constant, rows_where
from sdbatch.manifest.lists import by_distinct
from sdbatch.manifest.problems import Problems
from sdbatch.manifest.references import Resolver
from sdbatch.settings import HIRES_UPSCALERS, RowDefaults

PIPELINES = ("txt2img", "img2img", "inpaint")
# Past 4x the second pass works on 16x the first pass's pixels: a different recipe (tiled upscaling).
MAX_HIRES_SCALE = 4.0
# The columns image_columns writes, in order.
IMAGE_COLUMNS = ("pipeline", "init_image", "mask_image", "strength", "hires_scale", "hires_steps", "hires_strength",
                 "hires_upscaler")


def image_columns(table: pa.Table, columns: dict[str, Any], defaults: RowDefaults, resolver: Resolver,
                  problems: Problems) -> None:
    """Add IMAGE_COLUMNS to `columns` (which holds width and height); every misuse reported with its row."""
    (init, has_init), (mask, has_mask) = (_images(table, name, resolver, problems)
                                          for name in ("init_image", "mask_image"))
    problems.add_rows("mask_image", rows_where(pc.and_not(has_mask, has_init)), lambda n: (
        "is set but init_image is not: inpainting repaints the masked part of an init image; add one"))
    pipeline = pc.if_else(has_mask, "inpaint", pc.if_else(has_init, "img2img", "txt2img"))
    _check_given_pipeline(table, pipeline, problems)
    columns.update(pipeline=pipeline, init_image=init, mask_image=pc.if_else(has_init, mask, None))
    columns["strength"] = _fraction(table, "strength", defaults.strength, has_init, "init_image", problems)
    scale = _hires_scales(table, has_init, problems)
    has_hires = pc.is_valid(scale)
    _check_scaled_sizes(columns, scale, problems)
    _check_pixels(columns, scale, defaults.max_pixels, problems)
    columns["hires_scale"] = scale
    steps = cols.ints(table, "hires_steps", None, problems, low=1, high=defaults.max_steps,
                      fix=f"use 1 to {defaults.max_steps} ([defaults] max_steps raises it), or null for `steps`")
    _refuse_where(table, "hires_steps", pc.and_not(pc.is_valid(steps), has_hires), "hires_scale", problems)
    columns["hires_steps"] = pc.if_else(has_hires, steps, pa.scalar(None, pa.int64()))
    columns["hires_strength"] = _fraction(table, "hires_strength", defaults.hires_strength, has_hires,
                                          "hires_scale", problems)
    upscaler = cols.strings(table, "hires_upscaler", None, problems, allowed=HIRES_UPSCALERS)
    _refuse_where(table, "hires_upscaler", pc.and_not(pc.is_valid(upscaler), has_hires), "hires_scale", problems)
    columns["hires_upscaler"] = pc.if_else(has_hires, pc.fill_null(upscaler, defaults.hires_upscaler),
                                           pa.scalar(None, pa.string()))


def _images(table: pa.Table, name: str, resolver: Resolver, problems: Problems) -> tuple[Column, Column]:
    """The column's references resolved as control images are (local ones absolute and checked; null where
    unusable), and where one was given ('' and null: none)."""
    values = cols.strings(table, name, None, problems)
    values = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
    what = name.replace("_", " ")
    resolved, failed = by_distinct(cols.one_chunk(values), partial(resolver.image, what=what))
    problems.add_rows(name, rows_where(failed), lambda n: resolver.image(values[n].as_py(), what)[1])
    return resolved, pc.is_valid(values)


def _check_given_pipeline(table: pa.Table, derived: Column, problems: Problems) -> None:
    """`pipeline` is derived from the images a row has; a manifest may carry it (a normalized one does)."""
    given = cols.typed_column(table, "pipeline", "string", problems)
    if given is None:
        return
    differs = pc.and_(pc.is_valid(given), pc.not_equal(pc.fill_null(given, ""), derived))
    problems.add_rows("pipeline", rows_where(differs), lambda n: (
        f"is {given[n].as_py()!r}, but the row's images make it {derived[n].as_py()!r} (init_image: img2img, "
        "with mask_image: inpaint); drop the column, it is derived"))


def _fraction(table: pa.Table, name: str, default: float, applies: Column, needs: str,
              problems: Problems) -> Column:
    """A value in (0, 1] where `applies` (the default where null), null elsewhere; set elsewhere is refused."""
    x = cols.optional_floats(table, name, problems)
    if x is None:
        return pc.if_else(applies, pa.scalar(float(default)), pa.scalar(None, pa.float64()))
    _refuse_where(table, name, pc.and_not(pc.is_valid(x), applies), needs, problems)
    outside = pc.and_(applies, pc.or_(pc.less_equal(x, 0.0), pc.greater(x, 1.0)))
    problems.add_rows(name, rows_where(outside), lambda n: (
        f"{x[n].as_py()} is outside (0, 1]; use e.g. 0.3 to keep most of the image, 0.75 to repaint it"))
    return pc.if_else(applies, pc.fill_null(x, float(default)), pa.scalar(None, pa.float64()))


def _hires_scales(table: pa.Table, has_init: Column, problems: Problems) -> Column:
    x = cols.optional_floats(table, "hires_scale", problems)
    if x is None:
        return constant(None, pa.float64(), table.num_rows)
    bad = pc.or_(pc.less_equal(x, 1.0), pc.greater(x, MAX_HIRES_SCALE))
    problems.add_rows("hires_scale", rows_where(bad), lambda n: (
        f"{x[n].as_py()} is outside (1, {MAX_HIRES_SCALE:g}]; use e.g. 1.5 or 2, or null for no second pass"))
    problems.add_rows("hires_scale", rows_where(pc.and_(pc.is_valid(x), has_init)), lambda n: (
        "is set on a row with an init_image; the hires pass follows a text-to-image first pass, as in A1111"))
    return pc.if_else(pc.fill_null(bad, False), pa.scalar(None, pa.float64()), x)


def _check_scaled_sizes(columns: dict[str, Any], scale: Column, problems: Problems) -> None:
    """The second pass renders at width x scale by height x scale: it needs both sizes, and whole multiples of 8."""
    rows = rows_where(pc.is_valid(scale)).to_numpy(zero_copy_only=False)
    if not len(rows):
        return
    at = pa.array(rows)
    factors = pc.take(scale, at).to_numpy(zero_copy_only=False)
    for name in ("width", "height"):
        sizes = pc.take(columns[name], at)
        missing = rows[~pc.is_valid(sizes).to_numpy(zero_copy_only=False)]
        problems.add_rows(name, pa.array(missing, pa.int64()), lambda n: (
            "is null (the model's native size) on a hires row; give the first pass's size, which is scaled"))
        base = pc.fill_null(sizes, 0).to_numpy(zero_copy_only=False).astype(np.float64)
        scaled = base * factors
        checked = (base > 0) & (base % 8 == 0)  # a size that is no multiple of 8 is reported as such already
        bad = checked & ((np.abs(scaled - np.round(scaled)) > 1e-6) | (np.round(scaled) % 8 != 0))
        problems.add_rows(name, pa.array(rows[bad], pa.int64()), partial(_scaled_problem, columns[name], scale))


def _check_pixels(columns: dict[str, Any], scale: Column, limit: int, problems: Problems) -> None:
    """Width x height, and a hires row's output, at most the job's max_pixels (a native size, null, is the
    model's own and always fits)."""
    width, height = (pc.cast(columns[name], pa.float64()) for name in ("width", "height"))
    pixels = pc.multiply(width, height)
    hires = pc.multiply(pixels, pc.multiply(scale, scale))
    too_big = pc.or_(pc.fill_null(pc.greater(pixels, limit), False), pc.fill_null(pc.greater(hires, limit), False))
    limit_text = f"{limit:,} pixels ([defaults] max_pixels or --max-pixels raises it)"

    def message(n: int) -> str:
        w, h, factor = width[n].as_py(), height[n].as_py(), scale[n].as_py()
        if w * h > limit:
            return f"{w:g} x {h:g} is more than {limit_text}; use a smaller size"
        return f"the hires pass's {w * factor:g} x {h * factor:g} is more than {limit_text}; use a smaller hires_scale"

    problems.add_rows("width", rows_where(too_big), message)


def _scaled_problem(sizes: Column, scale: Column, n: int) -> str:
    size, factor = sizes[n].as_py(), scale[n].as_py()
    return (f"{size} x hires_scale {factor:g} = {size * factor:g} is not a multiple of 8; pick a size and scale "
            f"whose product is (hires_scale 2 gives {size * 2})")


def _refuse_where(table: pa.Table, name: str, mask: Column, needs: str, problems: Problems) -> None:
    problems.add_rows(name, rows_where(mask), lambda n: f"is set but {needs} is not; set {needs} or drop {name}")
