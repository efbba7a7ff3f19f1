"""Manifest authoring: prompts from .txt, .csv, .jsonl or a YAML template, expanded over seeds."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from sdbatch.manifest import RESULT_COLUMNS, ManifestError

# Label columns every authored row gets, so each image knows which prompt and which seed it is.
INDEX_COLUMNS = ("prompt_index", "seed_index")
TEMPLATE_FIELDS = ("prompt", "negative_prompt")  # template text that may use slots
TEMPLATE_KEYS = TEMPLATE_FIELDS + ("slots", "mode", "count", "seed", "columns")
# {name} or {a|b|c}, and __wildcard__ (a file wildcard.txt).
TOKEN = re.compile(r"\{([^{}]*)\}|__([A-Za-z0-9][A-Za-z0-9_-]*?)__")
WILDCARD = re.compile(r"^__([A-Za-z0-9][A-Za-z0-9_-]*?)__$")
SLOT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
# Names a slot or a constant column may not take: authoring writes them itself.
RESERVED = frozenset(("id", "prompt", "seed") + INDEX_COLUMNS + RESULT_COLUMNS)
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


@dataclass(frozen=True)
class Slot:
    name: str  # the label (or manifest) column it fills
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Template:
    fields: dict[str, tuple[str, ...]]  # per field: literal, slot name, literal, slot name, ..., literal
    slots: tuple[Slot, ...]
    columns: dict[str, Any]  # the same value on every row
    mode: str = "all"
    count: int | None = None
    seed: int = 0

    @property
    def combinations(self) -> int:
        return math.prod(len(slot.values) for slot in self.slots)

    def picks(self, n: int) -> Iterator[tuple[int, ...]]:
        """Value indices per slot for the first n prompts: every combination in order, or a seeded sample."""
        sizes = [len(slot.values) for slot in self.slots]
        if self.mode == "all":
            yield from itertools.islice(itertools.product(*map(range, sizes)), n)
            return
        for index in _sample(self.combinations, self.count, self.seed)[:n]:
            digits = []
            for size in reversed(sizes):
                index, digit = divmod(index, size)
                digits.append(digit)
            yield tuple(reversed(digits))

    def table(self, n: int, where: str) -> pa.Table:
        columns: dict[str, list] = {name: [] for name in [*self.fields, *(s.name for s in self.slots)]}
        for digits in self.picks(n):
            values = {slot.name: slot.values[d] for slot, d in zip(self.slots, digits)}
            for name, parts in self.fields.items():
                columns[name].append("".join(str(values[p]) if i % 2 else p for i, p in enumerate(parts)))
            for name, value in values.items():
                columns[name].append(value)
        rows = len(columns["prompt"])
        columns.update({name: [value] * rows for name, value in self.columns.items()})
        return _columns_table(columns, where)


def _sample(population: int, count: int, seed: int) -> list[int]:
    """count distinct combination numbers, the same for the same seed."""
    rng = random.Random(seed)
    if population < 2**62:  # random.sample needs len(range) to fit a C ssize_t
        return rng.sample(range(population), count)
    chosen: dict[int, None] = {}
    while len(chosen) < count:
        chosen[rng.randrange(population)] = None
    return list(chosen)


def _from_template(source: Path, options: AuthoringOptions) -> Prompts:
    template = load_template(source, options.wildcards or source.parent / "wildcards")
    sizes = " x ".join(f"{len(s.values)} {s.name}" for s in template.slots) or "no slots"
    total = template.combinations
    if template.mode == "all":
        count, what = total, f"{total:,} combination(s) of {sizes}"
    else:
        count, what = template.count, f"{template.count:,} drawn with seed {template.seed} from {total:,} of {sizes}"
    return Prompts(count, lambda n: template.table(n, str(source)), what)


def load_template(source: Path, wildcards: Path) -> Template:
    import yaml

    try:
        doc = yaml.safe_load(source.read_text())
    except yaml.YAMLError as exc:
        raise ManifestError(f"template {source} is not valid YAML ({exc}); quote text that starts with "
                            "{ or contains ': ', e.g. prompt: \"{red|green} cat\"") from exc
    doc = _check_keys(doc, source)
    slots = _Slots(source, wildcards)
    slots.declare(doc.get("slots") or {})
    fields = {name: slots.compile(doc[name], name) for name in TEMPLATE_FIELDS if name in doc}
    columns = doc.get("columns") or {}
    if not isinstance(columns, dict):
        raise ManifestError(f"template {source}: columns must be a mapping, e.g. columns: {{steps: 25}}")
    for name in columns:
        slots.check_name(name, "columns", taken=set(fields) | set(slots.slots))
    template = Template(fields, tuple(slots.slots.values()), columns, doc.get("mode", "all"),
                        doc.get("count"), doc.get("seed", 0))
    return _check_mode(template, source)


def _check_keys(doc: Any, source: Path) -> dict:
    if not isinstance(doc, dict) or "prompt" not in doc:
        raise ManifestError(f"template {source} needs a mapping with a 'prompt' key, e.g. "
                            "prompt: \"a {color} {animal}\"")
    unknown = sorted(set(doc) - set(TEMPLATE_KEYS))
    if unknown:
        raise ManifestError(f"template {source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(TEMPLATE_KEYS)}")
    for name in TEMPLATE_FIELDS:
        if name in doc and not isinstance(doc[name], str):
            raise ManifestError(f"template {source}: {name} must be text; quote it, e.g. {name}: \"{{red|green}} cat\"")
    return doc


def _check_mode(template: Template, source: Path) -> Template:
    where = f"template {source}"
    if template.mode not in ("all", "random"):
        raise ManifestError(f"{where}: mode {template.mode!r} is not known; use all (every combination) or random")
    if not isinstance(template.seed, int) or isinstance(template.seed, bool):
        raise ManifestError(f"{where}: seed must be an integer")
    if template.mode == "all" and template.count is not None:
        raise ManifestError(f"{where}: count applies to mode: random; remove it, or add mode: random")
    if template.mode == "random":
        if not isinstance(template.count, int) or template.count < 1:
            raise ManifestError(f"{where}: mode: random needs count: N (prompts to draw, at least 1)")
        if template.count > template.combinations:
            raise ManifestError(f"{where}: count {template.count:,} is more than the {template.combinations:,} "
                                "distinct combinations; lower it or use mode: all")
    return template


class _Slots:
    """The template's slots in column order: declared ones, then inline {a|b} and __wildcards__ as met."""

    def __init__(self, source: Path, wildcards: Path):
        self.source, self.wildcards = source, wildcards
        self.slots: dict[str, Slot] = {}
        self.choices = 0

    def fail(self, message: str) -> ManifestError:
        return ManifestError(f"template {self.source}: {message}")

    def check_name(self, name: Any, what: str, taken: set[str]) -> None:
        if not isinstance(name, str) or not SLOT_NAME.match(name):
            raise self.fail(f"{what} name {name!r} must be letters, digits, _ or - (a column name)")
        if name in RESERVED or name in taken:
            raise self.fail(f"{what} name '{name}' is taken (by sdbatch or another slot/field); rename it")

    def declare(self, declared: Any) -> None:
        if not isinstance(declared, dict):
            raise self.fail("slots must be a mapping, e.g. slots: {color: [red, green]}")
        for name, spec in declared.items():
            self.check_name(name, "slot", taken=set(self.slots) | set(TEMPLATE_FIELDS))
            wildcard = WILDCARD.match(spec) if isinstance(spec, str) else None
            if wildcard:
                self.slots[name] = Slot(name, self.read_wildcard(wildcard.group(1)))
            elif isinstance(spec, list) and spec and all(isinstance(v, (str, int, float, bool)) for v in spec):
                self.slots[name] = Slot(name, tuple(spec))
            else:
                raise self.fail(f"slot '{name}': give a list of values, e.g. [red, green], or a wildcard "
                                f"like __{name}__ (a file {name}.txt in {self.wildcards})")

    def compile(self, text: str, field: str) -> tuple[str, ...]:
        parts, end = [], 0
        for match in TOKEN.finditer(text):
            parts += [text[end:match.start()], self.slot_for(match, field)]
            end = match.end()
        return tuple(parts + [text[end:]])

    def slot_for(self, match: re.Match, field: str) -> str:
        inner, wildcard = match.group(1), match.group(2)
        if wildcard is not None:
            if wildcard not in self.slots:
                self.check_name(wildcard, "wildcard", taken=set(TEMPLATE_FIELDS))
                self.slots[wildcard] = Slot(wildcard, self.read_wildcard(wildcard))
            return wildcard
        if "|" not in inner:
            if inner.strip() in self.slots:
                return inner.strip()
            raise self.fail(f"{field} uses {{{inner}}} but slots has no '{inner}'; add it under slots, "
                            "or write alternatives as {a|b}")
        if TOKEN.search(inner):
            raise self.fail(f"{field}: {{{inner}}} nests a wildcard in alternatives; declare a slot instead")
        self.choices += 1
        name = f"choice_{self.choices}"
        self.check_name(name, "choice", taken=set(self.slots))
        self.slots[name] = Slot(name, tuple(option.strip() for option in inner.split("|")))
        return name

    def read_wildcard(self, name: str) -> tuple[str, ...]:
        path = self.wildcards / f"{name}.txt"
        if not path.is_file():
            raise self.fail(f"wildcard __{name}__ has no file {path}; create it (one choice a line) "
                            "or pass --wildcards DIR")
        lines = [line.strip() for line in path.read_text().splitlines()]
        choices = tuple(line for line in lines if line and not line.startswith("#"))
        if not choices:
            raise self.fail(f"wildcard file {path} has no choices (one a line; # starts a comment)")
        return choices
