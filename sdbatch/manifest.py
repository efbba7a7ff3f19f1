"""Manifest: read a Parquet table (local or s3://), validate it with row-precise errors, normalize it."""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sdbatch.commits import RESULT_SCHEMA
from sdbatch.errors import ManifestError
from sdbatch.schedulers import SCHEDULERS
from sdbatch.settings import RowDefaults
from sdbatch.variant_columns import (
    CONSUMED_COLUMNS,
    Resolver,
    normalize_controlnets,
    normalize_loras,
)

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# The columns `normalize` writes, in order; every other column of its output is a label.
MANIFEST_COLUMNS = ("id", "prompt", "negative_prompt", "seed", "steps", "guidance_scale", "width", "height",
                    "scheduler", "model", "vae", "loras", "controlnets")
# Columns only the results table has: read_results joins them onto the manifest's, so a label of the same
# name would be shadowed.
RESULT_COLUMNS = tuple(name for name in RESULT_SCHEMA.names if name not in MANIFEST_COLUMNS)
MAX_LISTED_PROBLEMS = 10
MAX_SIZE = 8192


@dataclass(frozen=True)
class Problem:
    column: str
    row: str | None  # "row id 'x' (row 3)" or None for a whole-column problem
    message: str

    def __str__(self) -> str:
        where = f"column '{self.column}'" + (f", {self.row}" if self.row else "")
        return f"{where}: {self.message}"


def read_manifest(uri: str, s3_settings: Any = None) -> pa.Table:
    """Read a Parquet manifest from a local path or s3://bucket/key."""
    if uri.startswith("s3://"):
        return _parse_parquet(_read_s3_bytes(uri, s3_settings), uri)
    path = Path(uri)
    if not path.exists():
        raise ManifestError(f"manifest {uri} does not exist; check the path")
    if path.is_dir():
        raise ManifestError(f"manifest {uri} is a directory; pass a single .parquet file")
    return _parse_parquet(path.read_bytes(), uri)


def _read_s3_bytes(uri: str, s3_settings: Any) -> bytes:
    from sdbatch.errors import ObjectNotFound
    from sdbatch.store import open_store

    parent, _, name = uri.rpartition("/")
    try:
        return open_store(parent, s3_settings).get(name)
    except ObjectNotFound as exc:
        raise ManifestError(f"manifest {uri} does not exist; check the key") from exc


def _parse_parquet(data: bytes, uri: str) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"manifest {uri} is not a Parquet file ({exc}); "
                            "write it with pyarrow or pandas.DataFrame.to_parquet, "
                            "or build one with `sdbatch manifest new`") from exc


def derive_seed(job_seed: int, row_id: str) -> int:
    """A seed from (job seed, id): independent of row order, shard and batch; in [0, 2**63)."""
    digest = hashlib.sha256(f"{job_seed}/{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def normalize(table: pa.Table, defaults: RowDefaults) -> pa.Table:
    """Validate every row and return the manifest with ids, seeds, defaults, LoRAs and ControlNets filled in."""
    problems: list[Problem] = []
    ids = _normalize_ids(table, problems)
    _raise_if(problems, table.num_rows)
    where = [f"row id '{i}' (row {n})" for n, i in enumerate(ids)]
    columns: dict[str, pa.Array] = {"id": pa.array(ids, pa.string())}
    columns["prompt"] = _prompts(table, where, problems)
    columns["negative_prompt"] = _strings(table, "negative_prompt", defaults.negative_prompt, where, problems)
    columns["seed"] = _seeds(table, ids, defaults.seed, where, problems)
    columns["steps"] = _ints(table, "steps", defaults.steps, where, problems, low=1, fix="use steps >= 1")
    columns["guidance_scale"] = _floats(table, "guidance_scale", defaults.guidance_scale, where, problems)
    for name in ("width", "height"):
        columns[name] = _sizes(table, name, getattr(defaults, name), where, problems)
    columns["scheduler"] = _strings(table, "scheduler", defaults.scheduler, where, problems,
                                    allowed=SCHEDULERS)
    columns["model"] = _strings(table, "model", defaults.model, where, problems, nonempty=True)
    # None (null): the model's own VAE; the column is always written, so every run's manifest has one shape.
    columns["vae"] = _strings(table, "vae", defaults.vae, where, problems, nonempty_if_set=True)

    def report(column: str, n: int, message: str) -> None:
        problems.append(Problem(column, where[n] if n >= 0 else None, message))

    resolver = Resolver(defaults.lora_dir)
    prompts, columns["loras"] = normalize_loras(table, columns["prompt"].to_pylist(), resolver, report)
    columns["prompt"] = pa.array(prompts, pa.string())
    columns["controlnets"] = normalize_controlnets(table, resolver, report)
    _check_no_secrets_in_urls(columns, report)
    _check_label_names(table, problems)
    _raise_if(problems, table.num_rows)
    labels = {n: table.column(n) for n in table.column_names if n not in columns and n not in CONSUMED_COLUMNS}
    return pa.table({**columns, **labels})


# Query parameters that make a URL a credential (presigned S3/GCS/Azure links, tokens).
SECRET_QUERY = re.compile(r"(?i)(^|[?&])(x-amz-(signature|credential|security-token)|x-goog-(signature|credential)|"
                          r"signature|sig|token|access_token|api_key|key)=")


def _check_no_secrets_in_urls(columns: dict[str, pa.Array], report) -> None:
    """References are recorded in the output (manifest copy, results, each image's parameters): a URL that
    carries a password or a signature there would publish it."""
    def check(column: str, n: int, value: str | None) -> None:
        if value and value.startswith(("http://", "https://")):
            parts = urllib.parse.urlsplit(value)
            if "@" in parts.netloc or SECRET_QUERY.search(parts.query):
                report(column, n, "is a URL with a password, signature or token, which would be recorded in the "
                                  "output and in every image; use an s3:// URI (credentials from the environment) "
                                  "or a URL that needs none")

    for column in ("model", "vae"):
        for n, value in enumerate(columns[column].to_pylist()):
            check(column, n, value)
    for n, loras in enumerate(columns["loras"].to_pylist()):
        for lora in loras or []:
            check("loras", n, lora["path"])
    for n, nets in enumerate(columns["controlnets"].to_pylist()):
        for net in nets or []:
            check("controlnets", n, net["model"])
            check("controlnets", n, net["image"])


def _raise_if(problems: list[Problem], rows: int) -> None:
    if not problems:
        return
    shown = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    tail = f"\n  ... and {more} more problem(s)" if more > 0 else ""
    raise ManifestError(f"manifest has {len(problems)} problem(s) in {rows} rows:\n{shown}{tail}")


def _normalize_ids(table: pa.Table, problems: list[Problem]) -> list[str]:
    if "id" not in table.column_names:
        width = max(6, len(str(max(table.num_rows - 1, 0))))
        return [str(n).zfill(width) for n in range(table.num_rows)]
    column = table.column("id")
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            or pa.types.is_integer(column.type)):
        problems.append(Problem("id", None, f"has type {column.type}; use strings (or integers)"))
        return []
    ids = [None if v is None else str(v) for v in column.to_pylist()]
    seen: dict[str, int] = {}
    for n, value in enumerate(ids):
        if value is None:
            problems.append(Problem("id", f"row {n}", "is null; give every row an id or drop the column"))
        elif not ID_PATTERN.match(value):
            problems.append(Problem("id", f"row id {value!r} (row {n})",
                                    "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ (no '/', '..', spaces); "
                                    "rename it"))
        elif value in seen:
            problems.append(Problem("id", f"row id {value!r} (row {n})",
                                    f"duplicates row {seen[value]}; ids must be unique"))
        else:
            seen[value] = n
    return ids


def _values(table: pa.Table, name: str, kind: str, where: list[str], problems: list[Problem]):
    """The column as Python values, or None if absent or of the wrong type (a problem is recorded)."""
    if name not in table.column_names:
        return None
    column = table.column(name)
    ok = {
        "string": pa.types.is_string(column.type) or pa.types.is_large_string(column.type),
        "int": pa.types.is_integer(column.type) or pa.types.is_floating(column.type),
        "float": pa.types.is_integer(column.type) or pa.types.is_floating(column.type),
    }[kind] or pa.types.is_null(column.type)
    if not ok:
        problems.append(Problem(name, None, f"has type {column.type}; expected {kind}"))
        return None
    return column.to_pylist()


def _prompts(table, where, problems) -> pa.Array:
    if "prompt" not in table.column_names:
        problems.append(Problem("prompt", None, "is missing; add a string column 'prompt' "
                                "with one prompt per row"))
        return pa.nulls(table.num_rows, pa.string())
    values = _values(table, "prompt", "string", where, problems) or []
    for n, value in enumerate(values):
        if value is None:
            problems.append(Problem("prompt", where[n], "is null; use '' for an unconditional image"))
    return pa.array(values, pa.string())


def _strings(table, name, default, where, problems, allowed=None, nonempty=False,
             nonempty_if_set=False) -> pa.Array:
    values = _values(table, name, "string", where, problems)
    values = [default] * table.num_rows if values is None else [default if v is None else v for v in values]
    for n, value in enumerate(values):
        if allowed is not None and value is not None and value not in allowed:
            problems.append(Problem(name, where[n], f"{value!r} is not known; use one of {', '.join(allowed)}"))
        elif (nonempty or (nonempty_if_set and value is not None)) and not value:
            problems.append(Problem(name, where[n], f"is empty; name a {name} or leave it null for the job's"))
    return pa.array(values, pa.string())


def _seeds(table, ids, job_seed, where, problems) -> pa.Array:
    values = _ints(table, "seed", None, where, problems, low=0, high=2**63 - 1,
                   fix="use an integer in [0, 2**63) or null to derive one")
    seeds = [derive_seed(job_seed, ids[n]) if v is None else v for n, v in enumerate(values.to_pylist())]
    return pa.array(seeds, pa.int64())


def _ints(table, name, default, where, problems, low=None, high=None, fix="") -> pa.Array:
    values = _values(table, name, "int", where, problems)
    out: list[int | None] = []
    for n, value in enumerate(values if values is not None else [None] * table.num_rows):
        if value is None or value != value:  # NaN: pandas writes missing ints as float NaN
            out.append(default)
        elif isinstance(value, float) and not value.is_integer():  # not float(v) != int(v): inexact above 2**53
            problems.append(Problem(name, where[n], f"{value!r} is not a whole number; {fix}"))
            out.append(default)
        elif isinstance(value, float) and abs(value) > 2**53:  # e.g. pandas' int column with a missing value
            problems.append(Problem(name, where[n], f"{value!r} is a float above 2**53, so its exact value is "
                                    "already lost; write the column as integers (pandas: dtype 'Int64')"))
            out.append(default)
        elif (low is not None and value < low) or (high is not None and value > high):
            problems.append(Problem(name, where[n], f"{int(value)} is out of range; {fix}"))
            out.append(default)
        else:
            out.append(int(value))
    return pa.array(out, pa.int64())


def _floats(table, name, default, where, problems) -> pa.Array:
    values = _values(table, name, "float", where, problems)
    out = []
    for n, value in enumerate(values if values is not None else [None] * table.num_rows):
        if value is None or value != value:
            out.append(float(default))
        elif value < 0:
            problems.append(Problem(name, where[n], f"{value} is negative; use a value >= 0 (e.g. 7.5)"))
            out.append(float(default))
        else:
            out.append(float(value))
    return pa.array(out, pa.float64())


def _sizes(table, name, default, where, problems) -> pa.Array:
    values = _ints(table, name, default, where, problems, low=8, high=MAX_SIZE,
                   fix=f"use a multiple of 8 between 8 and {MAX_SIZE}")
    for n, value in enumerate(values.to_pylist()):
        if value is not None and value % 8:
            problems.append(Problem(name, where[n], f"{value} is not a multiple of 8; "
                                    f"use {value - value % 8} or {value - value % 8 + 8}"))
    return values


def _check_label_names(table, problems) -> None:
    for name in table.column_names:
        if name in RESULT_COLUMNS:
            problems.append(Problem(name, None, "is a name the results table uses; rename this label column"))



def check_local_references(table: pa.Table) -> None:
    """Refuse local model and VAE paths that cannot work (missing, not a diffusers folder or .safetensors file,
    a pickled checkpoint) before any actor starts; for runs whose actors share this machine's disk."""
    from sdbatch.render.models.sources import local_problem  # stdlib only: no torch

    problems = []
    for column in ("model", "vae"):
        if column not in table.column_names:
            continue
        for reference in sorted({v for v in table.column(column).to_pylist() if v}):
            problem = local_problem(reference)
            if problem:
                problems.append(Problem(column, None, problem))
    _raise_if(problems, table.num_rows)
