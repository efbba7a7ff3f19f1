"""A row's LoRA files and ControlNet kind against its model's family, before any GPU: a local LoRA made for another
family (its tensor names say so) and a ControlNet row of a kind the family has no ControlNet pipeline for."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from sdbatch.errors import ModelLoadError
from sdbatch.family import Family, is_kohya_lora, lora_families, read_header
from sdbatch.manifest import paths
from sdbatch.manifest.columns import rows_where
from sdbatch.manifest.lists import entries_of, struct_field
from sdbatch.manifest.problems import Problems, shown
from sdbatch.store import is_remote


def check_assets(family: Family, columns: Mapping[str, Any], mine, problems: Problems) -> None:
    if "loras" in columns:
        _check_loras(family, columns["loras"], mine, problems)
    if "controlnets" in columns and "pipeline" in columns and family.controlnet_pipelines is not None:
        _check_controlnet_kinds(family, columns, mine, problems)
    if "controlnets" in columns and family.controlnet_limit is not None:
        _check_controlnet_count(family, columns["controlnets"], mine, problems)


def _check_loras(family: Family, loras, mine, problems: Problems) -> None:
    entries = entries_of(loras)
    if not len(entries.values):
        return
    ours = pc.take(mine, entries.rows)
    picked = pc.filter(struct_field(entries.values, "path"), pc.fill_null(ours, False))
    wrong = {path: why for path in pc.unique(picked).drop_null().to_pylist() if (why := _unfit(path, family))}
    if not wrong:
        return
    rows, values = entries.rows.to_pylist(), struct_field(entries.values, "path").to_pylist()
    for row, path in zip(rows, values):
        if path in wrong and mine[row].as_py():
            problems.report("loras", row, f"{shown(path, 80)} {wrong[path]}")


def _unfit(path: str, family: Family) -> str | None:
    """Why a LoRA file cannot go into the family's models, from its tensor names; None if it may (or only an actor
    can tell)."""
    keys = _tensor_names(path)
    others = lora_families(keys)
    if others and family not in others:
        return (f"is a LoRA for {' or '.join(f.title for f in others)} models (its tensor names), but the row's model "
                f"is {family.title}; use a LoRA trained for the row's model")
    if not family.kohya_loras and is_kohya_lora(keys):
        return (f"is in kohya/A1111 format, which diffusers does not convert for {family.title} models; use a "
                "diffusers/PEFT-format file of this LoRA")
    return None


def _tensor_names(path: str) -> set[str]:
    """A local LoRA file's tensor names; empty for what only an actor reads or cannot be read here."""
    if is_remote(path) or not path.endswith(".safetensors"):
        return set()
    local = paths.local_path(path)
    if local is None or not paths.is_file(local):
        return set()  # the Resolver has reported it, or the actor resolves it
    try:
        return set(read_header(Path(local))) - {"__metadata__"}
    except (ModelLoadError, OSError):
        return set()  # unreadable: the actor's load fails the row with the reason


def _check_controlnet_kinds(family: Family, columns: Mapping[str, Any], mine, problems: Problems) -> None:
    """ControlNet rows whose call (or a hires row's second, an img2img call) has no ControlNet pipeline in
    diffusers, or one without what the row asks of it."""
    kinds, nets = columns["pipeline"], columns["controlnets"]
    controlled = pc.and_(mine, pc.greater(pc.fill_null(pc.list_value_length(nets), 0), 0))
    hires = pc.is_valid(columns["hires_scale"]) if "hires_scale" in columns else pc.scalar(False)
    for kind in ("img2img", "inpaint"):
        if family.controlnet_pipelines.of(kind) is None:
            bad = pc.and_(controlled, pc.fill_null(pc.equal(kinds, kind), False))
            if kind == "img2img":
                bad = pc.or_(bad, pc.and_(controlled, hires))
            problems.add_rows("controlnets", rows_where(bad), lambda n, kind=kind: (
                f"diffusers has no {kind} pipeline with ControlNets for {family.title} models (a hires pass is "
                "one); render this row without ControlNets, or as txt2img without a hires pass"))
    if not family.controlnet_latent_hires and "hires_upscaler" in columns:
        latent = pc.and_(pc.and_(controlled, hires), pc.fill_null(pc.equal(columns["hires_upscaler"], "latent"), False))
        problems.add_rows("hires_upscaler", rows_where(latent), lambda n: (
            f"is latent, but {family.title}'s ControlNet img2img pipeline takes images, not latents; use "
            "hires_upscaler = \"image\" for rows with ControlNets"))
    if family.distilled_guidance and "true_cfg_scale" in columns:
        guided = pc.and_(controlled, pc.fill_null(pc.greater(columns["true_cfg_scale"], 1.0), False))
        second = pc.or_(pc.fill_null(pc.not_equal(kinds, "txt2img"), False), hires)
        problems.add_rows("true_cfg_scale", rows_where(pc.and_(guided, second)), lambda n: (
            f"is above 1, but diffusers' {family.title} ControlNet pipelines for image rows and hires passes have "
            "no true CFG; use 1 for this row, or render it without ControlNets"))


def _check_controlnet_count(family: Family, nets, mine, problems: Problems) -> None:
    """Rows with more ControlNets than the family's pipeline takes in one call (Z-Image's takes one)."""
    limit = family.controlnet_limit
    counts = pc.fill_null(pc.list_value_length(nets), 0)
    problems.add_rows("controlnets", rows_where(pc.and_(mine, pc.greater(counts, limit))), lambda n: (
        f"lists {counts[n].as_py()} ControlNets, but diffusers' {family.title} ControlNet pipeline takes "
        f"{limit}; keep one per row (its strongest), or render the row with a model of another family"))
