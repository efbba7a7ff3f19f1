"""The driver's model checks, torch-free: local model and VAE references that cannot work, and each readable model's
family (sdbatch.family) with its rules on every row: sizes, columns, samplers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.family import Family, family_for_class, hub_model_class, model_class, tiny_family
from sdbatch.manifest import paths
from sdbatch.manifest.columns import SIZE_MULTIPLE, rows_where
from sdbatch.manifest.family_assets import check_assets
from sdbatch.manifest.problems import Notes, Problem, Problems, raise_if, shown
from sdbatch.manifest.prompts import note_unweighted
from sdbatch.store import is_remote

TINY_PREFIX = "tiny:"
SINGLE_FILE_SUFFIXES = (".safetensors",)
# Pickled checkpoints run code when loaded: refused, with the fix in the message.
UNSAFE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def looks_like_path(reference: str) -> bool:
    """True for references that can only mean a local path (absolute, relative, or deeper than org/name)."""
    # A missing local path would otherwise fall through to a confusing hub lookup.
    return reference.startswith(("/", "./", "../", "~")) or reference.count("/") > 1


def is_hub_id(reference: str) -> bool:
    """org/name (a Hugging Face repo), unless a local folder of that name is here (local paths win, as diffusers
    reads them)."""
    return (reference.count("/") == 1 and not looks_like_path(reference) and not is_remote(reference)
            and not reference.lower().endswith(SINGLE_FILE_SUFFIXES) and not paths.exists(paths.local_path(reference)))


def is_single_file(reference: str) -> bool:
    return reference.lower().endswith(SINGLE_FILE_SUFFIXES)


def local_problem(reference: str) -> str | None:
    """Why a local model or VAE reference cannot work (missing, wrong kind), or None; no imports, no I/O beyond stat."""
    if reference.startswith(TINY_PREFIX) or is_remote(reference) or not looks_like_path(reference):
        return None
    path = paths.local_path(reference)
    if path is None:
        return f"{shown(reference, 60)} {paths.path_problem(reference)}"
    if reference.lower().endswith(UNSAFE_SUFFIXES):
        return f"{reference!r} is a pickled checkpoint, which can run code when loaded; convert it to .safetensors"
    if is_single_file(reference):
        return None if paths.is_file(path) else f"{reference!r} does not exist; fix the path"
    if not paths.is_dir(path):
        return f"{reference!r} does not exist; fix the path (a diffusers folder or a .safetensors file)"
    if not (paths.is_file(path / "model_index.json") or paths.is_file(path / "config.json")):
        return (f"{reference!r} is not a diffusers folder (no model_index.json or config.json); pass a folder "
                "saved with save_pretrained or a single .safetensors file")
    return None


def check_local_references(table: pa.Table) -> None:
    """Refuse local model and VAE paths that cannot work (missing, not a diffusers folder or .safetensors file,
    a pickled checkpoint), then models of no family sdbatch renders, before any actor starts; for runs whose
    actors share this machine's disk. The rows' family rules are normalize's (check_families), checked once."""
    problems = []
    for column in ("model", "vae"):
        if column not in table.column_names:
            continue
        for reference in sorted(v for v in pc.unique(table.column(column)).to_pylist() if v):
            problem = local_problem(reference)
            if problem:
                problems.append(Problem(column, None, problem))
    raise_if(problems, table.num_rows)
    if "model" in table.column_names:
        for reference in pc.unique(table.column("model")).to_pylist():
            if reference:
                family_of(reference)  # ModelLoadError for a model no family claims


def check_step_cache(table: pa.Table, step_cache: str, first_row: int = 0) -> None:
    """With [render] step_cache set, refuse rows whose model's family has no step caching in diffusers, before
    any actor loads one (the actor refuses it too, for models only it can read)."""
    if step_cache == "none" or "model" not in table.column_names:
        return
    models, problems = table.column("model"), Problems(table.num_rows, first_row)
    for reference, family in model_families(models).items():
        if family is None or family.step_cache:
            continue
        rows = pc.indices_nonzero(pc.fill_null(pc.equal(models, reference), False))
        message = (f"{family.title} models have no step caching in diffusers, and the job sets [render] step_cache "
                   f"= {step_cache!r}; render these rows with step_cache = 'none' (a run of their own)")
        problems.add_rows("model", rows, lambda _n, text=message: text)
    problems.raise_if()


def family_of(reference: str) -> Family | None:
    """A model reference's family where this machine can tell: tiny models by name, local folders and files and
    cached (or reachable) hub models by the class they name (ModelLoadError for one no family claims). None for what
    only an actor can read: s3://, hub models neither cached nor reachable, paths that are not here (local_problem's
    to report)."""
    if reference.startswith(TINY_PREFIX):
        return tiny_family(reference[len(TINY_PREFIX):])
    name = class_of(reference)
    return None if name is None else family_for_class(name, f"model {reference!r}")


def class_of(reference: str) -> str | None:
    """The pipeline class a hub id or a local model names, torch-free; None where this machine cannot tell."""
    if is_hub_id(reference):
        return hub_model_class(reference)
    if is_remote(reference) or local_problem(reference) or not paths.exists(path := paths.local_path(reference)):
        return None
    return model_class(path)


def model_families(models) -> dict[str, Family | None]:
    """Each distinct model reference's family (family_of), read once per chunk: it may read files or ask the hub."""
    return {ref: family_of(ref) for ref in pc.unique(models).to_pylist() if ref}


def check_families(table: pa.Table, columns: Mapping[str, Any], problems: Problems, notes: Notes | None = None,
                   found: Mapping[str, Family | None] | None = None) -> None:
    """Each row checked against its model's family: sizes a multiple of what the family needs, nothing set in a
    column the family takes no input from, a scheduler it works with. `columns`: the normalized columns by name
    (model, sizes, scheduler, LoRA and ControlNet lists), `table` the manifest as written, `found` model_families of
    the model column when the caller has it. A model no family claims raises its ModelLoadError at once."""
    if "model" not in columns:
        return
    models = columns["model"]
    found = model_families(models) if found is None else found
    for family in dict.fromkeys(f for f in found.values() if f is not None):
        refs = pa.array([ref for ref, f in found.items() if f is family], pa.string())
        mine = pc.fill_null(pc.is_in(models, value_set=refs), False)
        for name in ("width", "height"):
            if name in columns:
                _check_sizes(family, name, columns[name], mine, problems)
        for name in dict.fromkeys([*columns, *table.column_names]):  # in order: the listed problems are stable
            if not family.takes(name):
                _check_refused(family, name, table, columns, mine, problems)
        if family.schedulers is not None and "scheduler" in columns:
            _check_schedulers(family, columns["scheduler"], mine, problems)
        if family.inpaint_models and "pipeline" in columns:
            _check_inpaint_models(family, [ref for ref, f in found.items() if f is family], columns, problems)
        check_assets(family, columns, mine, problems)
        if not family.prompt_weights and notes is not None and "prompt_syntax" in columns:
            for name in ("prompt", "negative_prompt"):
                note_unweighted(family.title, columns[name], columns["prompt_syntax"], mine, problems, notes)


def _check_sizes(family: Family, name: str, values, mine, problems: Problems) -> None:
    multiple = family.size_multiple
    if not pa.types.is_integer(values.type):
        return  # a raw column of another type: columns.sizes reports it
    # A value off the multiple every model needs is reported by columns.sizes already.
    bad = [v for v in pc.unique(pc.filter(values, mine)).to_pylist()
           if v is not None and v % multiple and not v % SIZE_MULTIPLE]
    if bad:
        rows = rows_where(pc.and_(mine, pc.fill_null(pc.is_in(values, value_set=pa.array(bad)), False)))
        problems.add_rows(name, rows, lambda n: _size_message(family, values[n].as_py()))


def _size_message(family: Family, value: int) -> str:
    low = value - value % family.size_multiple
    return (f"{value} is not a multiple of {family.size_multiple}, which {family.title} models need; use "
            f"{low or family.size_multiple} or {low + family.size_multiple}")


def _check_refused(family: Family, name: str, table: pa.Table, columns: Mapping[str, Any], mine,
                   problems: Problems) -> None:
    given, models = _given(name, table, columns), columns["model"]
    if given is not None:
        problems.add_rows(name, rows_where(pc.and_(mine, given)), lambda n: (
            f"is set, but {family.title} models (model {models[n].as_py()!r}) take no {name}; leave it empty for "
            "this model's rows"))


def _given(name: str, table: pa.Table, columns: Mapping[str, Any]):
    """Where a row sets the column: LoRA and ControlNet lists as normalized (a prompt's LoRA tags count), other
    columns as the manifest has them (the job's defaults fill every row: they are not a row's own). None: nowhere."""
    values = columns.get(name)
    if values is not None and (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)):
        return pc.greater(pc.fill_null(pc.list_value_length(values), 0), 0)
    if name not in table.column_names:
        return None
    values = table.column(name)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return pc.fill_null(pc.not_equal(values, ""), False)  # "": no text, as a missing negative prompt reads
    return pc.is_valid(values)


def _check_inpaint_models(family: Family, references: list[str], columns: Mapping[str, Any],
                          problems: Problems) -> None:
    """Rows of an inpainting-only model (FLUX.1 Fill) that are not inpainting rows, or bring ControlNets."""
    classes = {ref: class_of(ref) for ref in references if not ref.startswith(TINY_PREFIX)}
    only = [ref for ref, name in classes.items() if name in family.inpaint_models]
    if not only:
        return
    models, kinds = columns["model"], columns["pipeline"]
    nets = pc.fill_null(pc.list_value_length(columns["controlnets"]), 0) if "controlnets" in columns else None
    mine = pc.fill_null(pc.is_in(models, value_set=pa.array(only, pa.string())), False)
    wrong = pc.fill_null(pc.not_equal(kinds, "inpaint"), True)
    if nets is not None:
        wrong = pc.or_(wrong, pc.greater(nets, 0))
    problems.add_rows("model", rows_where(pc.and_(mine, wrong)), lambda n: (
        f"{shown(models[n].as_py(), 80)} is an inpainting-only {family.title} model ({classes[models[n].as_py()]}), "
        "which renders rows with an init_image and a mask_image, without ControlNets; give the row both, or use "
        "the base model"))


def _check_schedulers(family: Family, values, mine, problems: Problems) -> None:
    allowed = pc.fill_null(pc.is_in(values, value_set=pa.array(family.schedulers, pa.string())), False)
    bad = pc.and_(mine, pc.and_(pc.is_valid(values), pc.invert(allowed)))
    problems.add_rows("scheduler", rows_where(bad), lambda n: (
        f"{values[n].as_py()!r} does not work with {family.title} models; use one of "
        f"{', '.join(family.schedulers)} or leave it empty for the model's own"))
