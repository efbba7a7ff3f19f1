"""YAML prompt templates: named and inline slots, wildcard files, all combinations or a seeded sample."""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdbatch.errors import ManifestError
from sdbatch.manifest.normalize import RESULT_COLUMNS

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

    def columns_for(self, n: int) -> dict[str, list]:
        """The first n prompts as columns: the filled-in fields, one column per slot, the constants."""
        columns: dict[str, list] = {name: [] for name in [*self.fields, *(s.name for s in self.slots)]}
        for digits in self.picks(n):
            values = {slot.name: slot.values[d] for slot, d in zip(self.slots, digits)}
            for name, parts in self.fields.items():
                columns[name].append("".join(str(values[p]) if i % 2 else p for i, p in enumerate(parts)))
            for name, value in values.items():
                columns[name].append(value)
        rows = len(columns["prompt"])
        columns.update({name: [value] * rows for name, value in self.columns.items()})
        return columns


def _sample(population: int, count: int, seed: int) -> list[int]:
    """count distinct combination numbers, the same for the same seed."""
    rng = random.Random(seed)
    if population < 2**62:  # random.sample needs len(range) to fit a C ssize_t
        return rng.sample(range(population), count)
    chosen: dict[int, None] = {}
    while len(chosen) < count:
        chosen[rng.randrange(population)] = None
    return list(chosen)


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
        raise ManifestError(f"template {source}: unknown key(s) {', '.join(unknown)}; "
                            f"known: {', '.join(TEMPLATE_KEYS)}")
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
