"""Manifest authoring: prompts from .txt, .csv, .jsonl or a YAML template, expanded over seeds."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from sdbatch.errors import ManifestError
from sdbatch.manifest.templates import INDEX_COLUMNS, load_template

# CSV columns kept as text even when every value looks like a number (ids like 0012, prompts like 1984).
TEXT_COLUMNS = ("id", "prompt", "negative_prompt", "model", "scheduler", "controlnet", "control_image")


@dataclass(frozen=True)
class AuthoringOptions:
    # One image per prompt unless asked; seeds multiply the rows.
    seeds: int = 1
    # None leaves seeds to the job seed (one derived per id); a number writes start..start+N-1 per prompt.
    seed_start: int | None = None
    # A night on a hundred GPUs; more is likelier a template that exploded than a plan.
    max_rows: int = 1_000_000
    # Over max_rows is refused by default: silently dropping combinations would skew the set.
    truncate: bool = False
    # None: the `wildcards` folder next to the template.
    wildcards: Path | None = None


@dataclass(frozen=True)
class Authored:
    table: pa.Table
    summary: str  # how the rows were made, e.g. "6 combinations (3 color x 2 animal) x 2 seed(s)"


@dataclass(frozen=True)
class Prompts:
    count: int  # prompts before seeds
    build: Callable[[int], pa.Table]  # the first n prompts, one row each, with a 'prompt' column
    what: str


def build_manifest(source: Path, options: AuthoringOptions = AuthoringOptions()) -> Authored:
    """The manifest for a prompts file or template: every prompt times --seeds, capped at max_rows."""
    if options.seeds < 1 or options.max_rows < 1:
        raise ManifestError("--seeds and --max-rows must be at least 1")
    prompts = read_prompts(Path(source), options)
    rows = prompts.count * options.seeds
    what = f"{prompts.what} x {options.seeds} seed(s)"
    if rows > options.max_rows and not options.truncate:
        raise ManifestError(f"{source} would make {rows:,} rows ({what}), over --max-rows {options.max_rows:,}; "
                            "raise --max-rows, lower --seeds, sample with `mode: random` and a `count`, "
                            f"or pass --truncate to keep the first {options.max_rows:,}")
    kept = min(rows, options.max_rows)
    base = prompts.build(-(-kept // options.seeds))
    table = with_seeds(base, options.seeds, options.seed_start, prompts.count).slice(0, kept)
    if kept < rows:
        what += f", truncated to the first {kept:,} of {rows:,} rows"
    return Authored(table, what)


def with_seeds(base: pa.Table, seeds: int, seed_start: int | None = None, prompts: int | None = None) -> pa.Table:
    """seeds rows per prompt: ids p{prompt}-s{k} (or {id}-s{k}), prompt_index and seed_index labels."""
    for name in INDEX_COLUMNS:
        if name in base.column_names:
            raise ManifestError(f"column '{name}' is added by sdbatch; rename that column")
    if "seed" in base.column_names and (seeds > 1 or seed_start is not None):
        raise ManifestError("column 'seed' is set in the file, so --seeds/--seed-start would repeat or override "
                            "it; drop the column or those flags")
    prompt_index = [p for p in range(base.num_rows) for _ in range(seeds)]
    seed_index = [k for _ in range(base.num_rows) for k in range(seeds)]
    picked = base.take(pa.array(prompt_index, pa.int64()))
    width = max(4, len(str((prompts or base.num_rows) - 1)))
    if "id" in base.column_names:
        given = [str(v) for v in picked.column("id").to_pylist()]
        ids = given if seeds == 1 else [f"{i}-s{k}" for i, k in zip(given, seed_index)]
    else:
        ids = [f"p{p:0{width}d}-s{k}" for p, k in zip(prompt_index, seed_index)]
    columns = {"id": pa.array(ids, pa.string())}
    columns.update({name: picked.column(name) for name in picked.column_names if name != "id"})
    columns.update(prompt_index=pa.array(prompt_index, pa.int64()), seed_index=pa.array(seed_index, pa.int64()))
    if seed_start is not None:
        columns["seed"] = pa.array([seed_start + k for k in seed_index], pa.int64())
    return pa.table(columns)


def prompts_table(texts: list[str], seeds: int, seed_start: int | None = None) -> pa.Table:
    """Rows for a list of prompts (the .txt format and the demo)."""
    return with_seeds(pa.table({"prompt": pa.array(texts, pa.string())}), seeds, seed_start)


def read_prompts(source: Path, options: AuthoringOptions) -> Prompts:
    if not source.is_file():
        raise ManifestError(f"prompts file {source} does not exist; check the path")
    readers = {".txt": _from_text, ".csv": _from_csv, ".jsonl": _from_jsonl,
               ".yaml": _from_template, ".yml": _from_template}
    reader = readers.get(source.suffix.lower())
    if reader is None:
        raise ManifestError(f"{source}: unknown kind '{source.suffix}'; use .txt (one prompt a line), .csv or "
                            ".jsonl (a 'prompt' column plus any others), or a .yaml template")
    return reader(source, options)


def _fixed(table: pa.Table, source: Path, what: str) -> Prompts:
    if "prompt" not in table.column_names:
        raise ManifestError(f"{source} has no 'prompt' column (found: {', '.join(table.column_names) or 'none'}); "
                            "name the prompt column 'prompt'")
    if table.num_rows == 0:
        raise ManifestError(f"{source} has no prompts")
    missing = [n + 1 for n, v in enumerate(table.column("prompt").to_pylist()) if v is None]
    if missing:
        raise ManifestError(f"{source}: record(s) {', '.join(map(str, missing[:10]))} have no prompt; "
                            "give every record a prompt ('' for an unconditional image)")
    return Prompts(table.num_rows, lambda n: table.slice(0, n), f"{table.num_rows} {what}")


def _from_text(source: Path, options: AuthoringOptions) -> Prompts:
    lines = [line.strip() for line in source.read_text().splitlines()]
    texts = [line for line in lines if line and not line.startswith("#")]
    if not texts:
        raise ManifestError(f"prompts file {source} has no prompts (one per line; # starts a comment)")
    return _fixed(pa.table({"prompt": pa.array(texts, pa.string())}), source, "prompts")


def _from_csv(source: Path, options: AuthoringOptions) -> Prompts:
    import pyarrow.csv as pcsv

    convert = pcsv.ConvertOptions(column_types={name: pa.string() for name in TEXT_COLUMNS})
    try:
        table = pcsv.read_csv(source, convert_options=convert)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"{source} is not a readable CSV ({exc}); write a header row with a 'prompt' "
                            "column and quote fields that contain commas") from exc
    return _fixed(table, source, "rows")


def _from_jsonl(source: Path, options: AuthoringOptions) -> Prompts:
    records = []
    for number, line in enumerate(source.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{source} line {number} is not JSON ({exc.msg}); write one object per line") from exc
        if not isinstance(record, dict):
            raise ManifestError(f'{source} line {number} is not an object; write {{"prompt": "..."}} per line')
        records.append(record)
    names = list(dict.fromkeys(name for record in records for name in record))
    return _fixed(_columns_table({n: [r.get(n) for r in records] for n in names}, str(source)), source, "records")


def _columns_table(columns: dict[str, list], where: str) -> pa.Table:
    arrays = {}
    for name, values in columns.items():
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ManifestError(f"{where}: column '{name}' mixes types ({exc}); give it values of one type") from exc
    return pa.table(arrays)


def _from_template(source: Path, options: AuthoringOptions) -> Prompts:
    template = load_template(source, options.wildcards or source.parent / "wildcards")
    sizes = " x ".join(f"{len(s.values)} {s.name}" for s in template.slots) or "no slots"
    total = template.combinations
    if template.mode == "all":
        count, what = total, f"{total:,} combination(s) of {sizes}"
    else:
        count, what = template.count, f"{template.count:,} drawn with seed {template.seed} from {total:,} of {sizes}"
    return Prompts(count, lambda n: _columns_table(template.columns_for(n), str(source)), what)
