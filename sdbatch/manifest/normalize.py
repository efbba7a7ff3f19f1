"""Manifest: read a Parquet table (local or s3://), validate it with row-precise errors, normalize it."""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdbatch.a1111.samplers import resolve
from sdbatch.errors import ManifestError, ObjectNotFound
from sdbatch.manifest import columns as cols
from sdbatch.manifest.columns import ID_PATTERN, MAX_SIZE, derive_seed, duplicate_ids, rows_where
from sdbatch.manifest.controlnets import SIMPLE_CONTROLNET_COLUMNS, normalize_controlnets
from sdbatch.manifest.guidance import family_guidance, guidance_columns
from sdbatch.manifest.images import image_columns
from sdbatch.manifest.labels import MANIFEST_COLUMNS, RESULT_COLUMNS, check_label_names
from sdbatch.manifest.lists import Entries, entries_of, struct_field
from sdbatch.manifest.models import check_families, model_families
from sdbatch.manifest.problems import MAX_LISTED_PROBLEMS, Notes, Problem, Problems, shown
from sdbatch.manifest.prompts import prompt_columns
from sdbatch.manifest.readable import readable
from sdbatch.manifest.references import Resolver, normalize_loras
from sdbatch.settings import RowDefaults
from sdbatch.store import SCHEME_PATTERN, Reader, carries_secret, is_remote_store

__all__ = ["ID_PATTERN", "MANIFEST_COLUMNS", "MAX_LISTED_PROBLEMS", "MAX_SIZE", "RESULT_COLUMNS", "Problem",
           "derive_seed", "duplicate_ids", "normalize", "read_manifest"]

# Longer than any sampler's or schedule's name, A1111's included: judged without quoting it whole.
MAX_SAMPLER_NAME = 64
# Columns normalize reads into others (the list columns, the schedule type): they are not kept as labels.
CONSUMED_COLUMNS = ("loras", "controlnets", *SIMPLE_CONTROLNET_COLUMNS, "schedule")



def read_manifest(uri: str, s3_settings: Any = None) -> pa.Table:
    """Read a Parquet manifest from a local path or a store (s3://bucket/key)."""
    if is_remote_store(uri):
        return _parse_parquet(_read_remote(uri, s3_settings), uri)
    path = Path(uri)
    if not path.exists():
        raise ManifestError(f"manifest {uri} does not exist; check the path")
    if path.is_dir():
        raise ManifestError(f"manifest {uri} is a directory; pass a single .parquet file")
    return _parse_parquet(path.read_bytes(), uri)


def _read_remote(uri: str, s3_settings: Any) -> bytes:
    try:
        return Reader(s3_settings).read(uri)
    except ObjectNotFound as exc:
        raise ManifestError(f"manifest {uri} does not exist; check the key") from exc


def _parse_parquet(data: bytes, uri: str) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(f"manifest {uri} is not a Parquet file ({exc}); "
                            "write it with pyarrow or pandas.DataFrame.to_parquet, "
                            "or build one with `sdbatch manifest new`") from exc


def normalize(table: pa.Table, defaults: RowDefaults, *, first_row: int = 0, total_rows: int | None = None,
              seed_workers: Executor | None = None, notes: Notes | None = None) -> pa.Table:
    """Validate every row and return the manifest with ids, seeds, defaults, LoRAs and ControlNets filled in.

    A chunk of a bigger manifest can be normalized alone: first_row is its first row's position there (for
    messages and default ids) and total_rows that manifest's size (for the default ids' width). Ids are
    checked for uniqueness within `table` only. seed_workers: processes that derive seeds in parallel. Warnings
    about what is accepted (prompts A1111 reads leniently, labels that look like settings) go to `notes`."""
    problems = Problems(table.num_rows, first_row)
    notes = Notes() if notes is None else notes
    table = readable(table, problems)
    with problems.stage("id"):
        ids = cols.normalize_ids(table, problems, first_row, total_rows)
    problems.raise_if()
    problems.ids = ids
    columns = _settings(table, ids, defaults, problems, seed_workers)
    with problems.stage("loras"):
        resolver = Resolver(defaults.lora_dir)
        columns["prompt"], columns["loras"] = normalize_loras(table, columns["prompt"], resolver, problems.report)
    with problems.stage("controlnets"):
        columns["controlnets"] = normalize_controlnets(table, resolver, problems.report)
    with problems.stage("prompt_syntax"):
        prompt_columns(table, columns, defaults, problems, notes)  # after the LoRA tags are out of the prompts
    with problems.stage("init_image"):
        image_columns(table, columns, defaults, resolver, problems)
    with problems.stage("true_cfg_scale"):
        guidance_columns(table, columns, defaults, problems)
    with problems.stage("model"):
        found = model_families(columns["model"])  # each model's family, read once for both
        family_guidance(table, columns, defaults, found)
        check_families(table, columns, problems, notes, found)  # the rows against what their model's family takes
        _check_no_secrets_in_urls(columns, problems)
    labels = {n: table.column(n) for n in table.column_names if n not in columns and n not in CONSUMED_COLUMNS}
    check_label_names(labels, problems, notes)
    problems.raise_if()
    return pa.table({**columns, **labels})


def _settings(table: pa.Table, ids: Any, defaults: RowDefaults, problems: Problems,
              seed_workers: Executor | None) -> dict[str, Any]:
    """The scalar columns: prompts, seeds, steps, guidance, sizes, scheduler, model and VAE; each checked in a
    stage of its own, so an error no check foresaw names its column."""
    steps_fix = f"use 1 to {defaults.max_steps} steps ([defaults] max_steps or --max-steps raises the limit)"
    checks = {
        "prompt": lambda: cols.prompts(table, problems),
        "negative_prompt": lambda: cols.strings(table, "negative_prompt", defaults.negative_prompt, problems),
        "seed": lambda: cols.seeds(table, ids, defaults.seed, problems, seed_workers),
        "steps": lambda: cols.ints(table, "steps", defaults.steps, problems, low=1, high=defaults.max_steps,
                                   fix=steps_fix),
        "guidance_scale": lambda: cols.floats(table, "guidance_scale", defaults.guidance_scale, problems),
        "width": lambda: cols.sizes(table, "width", defaults.width, problems),
        "height": lambda: cols.sizes(table, "height", defaults.height, problems),
        "scheduler": lambda: _schedulers(table, defaults.scheduler, problems),
        "model": lambda: cols.strings(table, "model", defaults.model, problems, nonempty=True),
        # None (null): the model's own VAE; the column is always written, so every run's manifest has one shape.
        "vae": lambda: cols.strings(table, "vae", defaults.vae, problems, nonempty_if_set=True),
    }
    columns: dict[str, Any] = {"id": ids}
    for name, check in checks.items():
        with problems.stage(name):
            columns[name] = check()
    return columns


def _schedulers(table: pa.Table, default: str | None, problems: Problems) -> Any:
    """Each row's scheduler by its sdbatch name, from sdbatch's or A1111's names in `scheduler` and an optional
    `schedule` column ("Karras"); each distinct pair resolved once."""
    names = cols.strings(table, "scheduler", default, problems)
    schedules = cols.strings(table, "schedule", None, problems)
    problems.add_rows("schedule", rows_where(pc.and_(pc.is_null(names), pc.fill_null(pc.not_equal(schedules, ""),
                                                                                     False))), lambda n: (
        f"is {shown(schedules[n].as_py())} but the row has no scheduler to apply it to (the model's own is kept); "
        "set `scheduler` (or --scheduler), or drop the schedule"))
    pairs = pc.binary_join_element_wise(pc.fill_null(names, ""), pc.fill_null(schedules, ""), "\x00")
    distinct = pc.unique(pairs).to_pylist()
    resolved, errors = [], {}
    for pair in distinct:
        name, _, schedule = pair.partition("\x00")
        try:
            if len(name) > MAX_SAMPLER_NAME or len(schedule) > MAX_SAMPLER_NAME:
                raise ValueError(f"{shown(name)} / {shown(schedule)} is not a sampler sdbatch knows")
            resolved.append(resolve(name, schedule) if name else None)
        except ValueError as exc:
            resolved.append(None)
            errors[pair] = f"{exc} (a `schedule` column or the name's suffix gives the schedule type)"
    if errors:
        bad = pc.is_in(pairs, value_set=pa.array(list(errors), pa.string()))
        problems.add_rows("scheduler", rows_where(bad), lambda n: errors[pairs[n].as_py()])
    return pc.take(pa.array(resolved, pa.string()), pc.index_in(pairs, value_set=pa.array(distinct, pa.string())))


SECRET_URL = ("is a URL with a password, signature or token, which would be recorded in the output and in every "
              "image; use an s3:// URI (credentials from the environment) or a URL that needs none")


def _secret(values) -> Any:
    """Per value: is it a URI that carries a password or a signature? Judged once per distinct URI."""
    uris = pc.unique(pc.filter(values, pc.match_substring_regex(values, SCHEME_PATTERN))).to_pylist()
    secret = [uri for uri in uris if carries_secret(uri)]
    if not secret:
        return pa.repeat(pa.scalar(False), len(values))
    return pc.is_in(values, value_set=pa.array(secret, pa.string()))


def _check_no_secrets_in_urls(columns: dict[str, Any], problems: Problems) -> None:
    """References are recorded in the output (manifest copy, results, each image's parameters): a URL that
    carries a password or a signature there would publish it."""
    for column in ("model", "vae", "init_image", "mask_image"):
        problems.add_rows(column, rows_where(_secret(columns[column])), lambda n: SECRET_URL)
    if len(pc.list_flatten(columns["loras"])):
        loras = entries_of(columns["loras"])
        for n in pc.filter(loras.rows, _secret(struct_field(loras.values, "path"))).to_pylist():
            problems.report("loras", n, SECRET_URL)
    if len(pc.list_flatten(columns["controlnets"])):
        _check_controlnet_urls(entries_of(columns["controlnets"]), problems)


def _check_controlnet_urls(nets: Entries, problems: Problems) -> None:
    """A ControlNet entry's model, then its image, as the row-by-row check reported them."""
    bad_model, bad_image = (_secret(struct_field(nets.values, name)) for name in ("model", "image"))
    either = pc.or_(bad_model, bad_image)
    for n, model, image in zip(*(pc.filter(a, either).to_pylist() for a in (nets.rows, bad_model, bad_image))):
        for bad in (model, image):
            if bad:
                problems.report("controlnets", n, SECRET_URL)
