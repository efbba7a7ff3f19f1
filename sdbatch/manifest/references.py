"""References a row names, resolved and checked here; the LoRA columns: inline <lora:...> tags and the `loras` list."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.manifest import paths
from sdbatch.manifest.columns import Column, one_chunk, rows_where
from sdbatch.manifest.lists import (
    assemble,
    by_distinct,
    entries_of,
    is_list,
    is_number,
    is_text,
    row_mask,
    rows_of,
    struct_field,
)
from sdbatch.manifest.problems import shown, unexpected
from sdbatch.store import is_remote, is_remote_store

LORA_TYPE = pa.list_(pa.struct([("path", pa.string()), ("weight", pa.float64())]))
# A1111 syntax: <lora:name> or <lora:name:weight>.
LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^>]*))?>")
# What str.split() splits on besides the space: a prompt holding one, or spaces at its ends or doubled, is
# rewritten by split_lora_tags even without a tag.
OTHER_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
REWRITTEN_PROMPT = "<lora:|^ | $|  |[" + "".join(f"\\x{{{ord(c):x}}}" for c in OTHER_WHITESPACE) + "]"
LORA_SUFFIX = ".safetensors"

Report = Callable[[str, int, str], None]  # (column, row position, message with the fix)
LIST_FIX = {"loras": "a list of {path, weight} entries per row (pandas: [{'path': 'a.safetensors', 'weight': 0.8}])",
            "controlnets": "a list of {model, image, scale} entries per row"}


@dataclass
class Resolver:
    """Turns LoRA and ControlNet references into what the actors load; caches per distinct reference."""

    lora_dir: str | None
    _cache: dict[tuple[str, str], tuple[str | None, str | None]] = field(default_factory=dict)

    def lora(self, name: str) -> tuple[str | None, str | None]:
        """(resolved reference, None) or (None, problem)."""
        return self._cached("lora", name, self._resolve_lora)

    def _cached(self, kind: str, reference: str, resolve: Callable[[str], tuple[str | None, str | None]]):
        key = (kind, reference)
        if key not in self._cache:
            try:
                self._cache[key] = resolve(reference)
            except Exception as exc:  # noqa: BLE001 - a reference no check foresaw is refused, not a traceback
                self._cache[key] = (None, f"{kind} {shown(reference)} {unexpected(exc)}")
        return self._cache[key]

    def _resolve_lora(self, name: str) -> tuple[str | None, str | None]:
        if is_remote_store(name):  # the actors fetch it; nothing here can check it
            return name, None
        problem = paths.path_problem(name)
        if problem:
            return None, f"LoRA {shown(name, 60)} {problem}"
        if "/" in name:
            return _local_or_hub(name, "LoRA file or folder")
        if self.lora_dir or not paths.exists(Path(name)):
            return self._from_lora_dir(name)
        return str(Path(name).resolve()), None

    def _from_lora_dir(self, name: str) -> tuple[str | None, str | None]:
        if not self.lora_dir:
            return None, (f"LoRA {name!r} is a bare name; pass --lora-dir DIR (looked up as DIR/{name}"
                          f"{'' if name.endswith(LORA_SUFFIX) else LORA_SUFFIX}) or give a path")
        root = paths.local_path(self.lora_dir)
        if root is None:
            return None, f"--lora-dir {shown(self.lora_dir, 60)} {paths.path_problem(self.lora_dir)}"
        for candidate in (root / name, root / f"{name}{LORA_SUFFIX}"):
            if paths.exists(candidate):
                return str(candidate.resolve()), None
        return None, f"LoRA {name!r} is not in --lora-dir {root} (looked for {root / name}{LORA_SUFFIX}); fix the name"

    def controlnet(self, model: str) -> tuple[str | None, str | None]:
        return self._cached("ControlNet", model, self._resolve_controlnet)

    @staticmethod
    def _resolve_controlnet(model: str) -> tuple[str | None, str | None]:
        resolved, problem = (model, None) if is_remote_store(model) else _local_or_hub(model, "ControlNet")
        if resolved and paths.is_dir(Path(resolved)) and not paths.is_file(Path(resolved) / "config.json"):
            return None, f"ControlNet {shown(model, 60)} has no config.json; pass a diffusers ControlNet folder"
        return resolved, problem

    def image(self, image: str, what: str = "control image") -> tuple[str | None, str | None]:
        return self._cached(what, image, lambda reference: _local_image(reference, what))


def _local_image(image: str, what: str) -> tuple[str | None, str | None]:
    if is_remote(image):
        return image, None
    path = paths.local_path(image)
    if path is None:
        return None, f"{what} {shown(image, 60)} {paths.path_problem(image)}"
    return (str(path.resolve()), None) if paths.is_file(path) else (None, f"{what} {image} does not exist")


def _local_or_hub(reference: str, what: str) -> tuple[str | None, str | None]:
    path = paths.local_path(reference)
    if path is None:
        return None, f"{what} {shown(reference, 60)} {paths.path_problem(reference)}"
    if paths.exists(path):
        return str(path.resolve()), None
    looks_local = reference.startswith(("/", "./", "../", "~")) or reference.count("/") != 1
    if looks_local or reference.endswith(LORA_SUFFIX):
        return None, f"{what} {reference} does not exist; fix the path"
    return reference, None  # org/name: a hub id, checked (from the cache or the hub) by the actor


def split_lora_tags(prompt: str) -> tuple[str, list[tuple[str, str | None]]]:
    """The prompt without its <lora:...> tags, and the (name, weight text) of each tag."""
    tags = [(m.group(1).strip(), m.group(2)) for m in LORA_TAG.finditer(prompt)]
    return " ".join(LORA_TAG.sub(" ", prompt).split()), tags


def normalize_loras(table: pa.Table, prompts: Column, resolver: Resolver, report: Report) -> tuple[Column, pa.Array]:
    """(cleaned prompts, LORA_TYPE array): list column entries first, then the prompt's tags. Only rows with a
    tag, a prompt whose spacing changes, or an entry that fails go through Python."""
    rewritten = pc.match_substring_regex(prompts, REWRITTEN_PROMPT)
    extra: list[pa.Array] = [rows_where(rewritten)]
    listed = table.column("loras") if "loras" in table.column_names else None
    entries = values = None
    if listed is not None and is_list(listed.type):
        entries = entries_of(listed)
        values, failed = _resolved_loras(entries.values, resolver)
        extra.append(pa.array(rows_of(entries, failed), pa.int64()))
    elif listed is not None and not pa.types.is_null(listed.type):
        report("loras", -1, f"has type {listed.type}; use {LIST_FIX['loras']}")
        listed = None
    py_rows = sorted(set().union(*(set(rows.to_pylist()) for rows in extra)))
    if not py_rows:
        return prompts, assemble(table.num_rows, LORA_TYPE, entries, values, [], [])
    at = pa.array(py_rows, pa.int64())
    row_entries = pc.take(listed, at).to_pylist() if listed is not None else [None] * len(py_rows)
    done = [_python_loras(n, prompt, row, resolver, report)
            for n, prompt, row in zip(py_rows, pc.take(prompts, at).to_pylist(), row_entries)]
    cleaned = pc.replace_with_mask(one_chunk(prompts), row_mask(table.num_rows, py_rows),
                                   pa.array([text for text, _ in done], pa.string()))
    return cleaned, assemble(table.num_rows, LORA_TYPE, entries, values, py_rows, [x for _, x in done])


def _python_loras(n: int, prompt: str | None, entries: Any, resolver: Resolver, report: Report):
    try:
        text, tags = split_lora_tags(prompt) if prompt else (prompt, [])
        loras = [_lora_entry(entry, n, resolver, report) for entry in entries or []]
        loras += [_tag_entry(name, weight, n, resolver, report) for name, weight in tags]
    except Exception as exc:  # noqa: BLE001 - a row no check foresaw is refused with its place
        report("loras", n, unexpected(exc))
        return prompt, []
    return text, [x for x in loras if x is not None]


def _resolved_loras(values: pa.Array, resolver: Resolver) -> tuple[pa.Array | None, pa.Array]:
    """Resolved (path, weight) entries and which entries failed; entries of unexpected types fail here and
    are judged in Python."""
    path, weight = struct_field(values, "path"), struct_field(values, "weight")
    if path is None or not is_text(path.type) or (weight is not None and not is_number(weight.type)):
        return None, pa.repeat(pa.scalar(True), len(values))
    path = path.cast(pa.string())
    usable = pc.fill_null(pc.not_equal(path, ""), False)
    resolved, failed = by_distinct(pc.if_else(usable, path, pa.scalar(None, pa.string())), resolver.lora)
    weights = number_or(weight, 1.0, len(values))
    entries = pa.StructArray.from_arrays([resolved, weights], names=["path", "weight"])
    return entries, pc.or_(pc.or_(pc.invert(usable), pc.invert(pc.is_finite(weights))), failed)


def number_or(values: pa.Array | None, default: float, count: int) -> pa.Array:
    if values is None:
        return pa.repeat(pa.scalar(default), count)
    return pc.fill_null(values.cast(pa.float64(), safe=False), default)


def _lora_entry(entry: Any, n: int, resolver: Resolver, report: Report) -> dict | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"]:
        report("loras", n, f"each entry needs a 'path' (and optionally a 'weight'); got {shown(entry)}")
        return None
    weight, problem = number(entry.get("weight"), 1.0, "weight", "0.8")
    if problem:
        report("loras", n, problem)
        return None
    return _resolved_lora(entry["path"], weight, "loras", n, resolver, report)


def _tag_entry(name: str, weight: str | None, n: int, resolver: Resolver, report: Report) -> dict | None:
    tag = f"<lora:{shown(name, 60)[1:-1]}:{shown(weight, 40)[1:-1]}>"
    value, problem = number(weight or None, 1.0, "weight", f"<lora:{shown(name, 60)[1:-1]}:0.8>", echo=False)
    if problem:
        report("prompt", n, f"{tag} {problem}")
        return None
    return _resolved_lora(name, value, "prompt", n, resolver, report)


def number(value: Any, default: float, what: str, example: str, echo: bool = True) -> tuple[float, str | None]:
    """A list entry's weight or scale as a finite float ((default, None) when unset), or a problem."""
    if value is None:
        return default, None
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):
        given = f" ({shown(value, 40)})" if echo else ""
        return default, f"has a {what} that is not a number{given}; write e.g. {example}"
    if not math.isfinite(result):
        return default, f"has a {what} of {result}, which cannot render; write a finite number, e.g. {example}"
    return result, None


def _resolved_lora(name: str, weight: float, column: str, n: int, resolver: Resolver, report: Report):
    path, problem = resolver.lora(name)
    if problem:
        report(column, n, problem)
        return None
    return {"path": path, "weight": weight}
