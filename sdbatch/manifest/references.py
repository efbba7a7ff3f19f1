"""Per-row LoRA and ControlNet columns: inline <lora:...> tags, list normalization, name lookup, local checks."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.manifest.columns import Column, one_chunk, rows_where
from sdbatch.manifest.lists import (
    Entries,
    assemble,
    by_distinct,
    entries_of,
    is_list,
    is_number,
    is_text,
    offsets_of,
    row_mask,
    rows_of,
    struct_field,
)
from sdbatch.store import is_remote, is_remote_store

LORA_TYPE = pa.list_(pa.struct([("path", pa.string()), ("weight", pa.float64())]))
CONTROLNET_TYPE = pa.list_(pa.struct([("model", pa.string()), ("image", pa.string()), ("scale", pa.float64())]))
# A1111 syntax: <lora:name> or <lora:name:weight>.
LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^>]*))?>")
# What str.split() splits on besides the space: a prompt holding one, or spaces at its ends or doubled, is
# rewritten by split_lora_tags even without a tag.
OTHER_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
REWRITTEN_PROMPT = "<lora:|^ | $|  |[" + "".join(f"\\x{{{ord(c):x}}}" for c in OTHER_WHITESPACE) + "]"
SIMPLE_CONTROLNET_COLUMNS = ("controlnet", "control_image", "controlnet_scale")
CONSUMED_COLUMNS = ("loras", "controlnets") + SIMPLE_CONTROLNET_COLUMNS
LORA_SUFFIX = ".safetensors"

Report = Callable[[str, int, str], None]  # (column, row position, message with the fix)


@dataclass
class Resolver:
    """Turns LoRA and ControlNet references into what the actors load; caches per distinct reference."""

    lora_dir: str | None
    _cache: dict[tuple[str, str], tuple[str | None, str | None]] = field(default_factory=dict)

    def lora(self, name: str) -> tuple[str | None, str | None]:
        """(resolved reference, None) or (None, problem)."""
        key = ("lora", name)
        if key not in self._cache:
            self._cache[key] = self._resolve_lora(name)
        return self._cache[key]

    def _resolve_lora(self, name: str) -> tuple[str | None, str | None]:
        if is_remote_store(name):  # the actors fetch it; nothing here can check it
            return name, None
        if "/" in name:
            return _local_or_hub(name, "LoRA file or folder")
        if self.lora_dir or not Path(name).exists():
            return self._from_lora_dir(name)
        return str(Path(name).resolve()), None

    def _from_lora_dir(self, name: str) -> tuple[str | None, str | None]:
        if not self.lora_dir:
            return None, (f"LoRA {name!r} is a bare name; pass --lora-dir DIR (looked up as DIR/{name}"
                          f"{'' if name.endswith(LORA_SUFFIX) else LORA_SUFFIX}) or give a path")
        root = Path(self.lora_dir).expanduser()
        for candidate in (root / name, root / f"{name}{LORA_SUFFIX}"):
            if candidate.exists():
                return str(candidate.resolve()), None
        return None, f"LoRA {name!r} is not in --lora-dir {root} (looked for {root / name}{LORA_SUFFIX}); fix the name"

    def controlnet(self, model: str) -> tuple[str | None, str | None]:
        key = ("controlnet", model)
        if key not in self._cache:
            resolved, problem = (model, None) if is_remote_store(model) else _local_or_hub(model, "ControlNet")
            if resolved and Path(resolved).is_dir() and not (Path(resolved) / "config.json").is_file():
                resolved, problem = None, f"ControlNet {model!r} has no config.json; pass a diffusers ControlNet folder"
            self._cache[key] = (resolved, problem)
        return self._cache[key]

    def image(self, image: str, what: str = "control image") -> tuple[str | None, str | None]:
        if is_remote(image):
            return image, None
        path = Path(image).expanduser()
        return (str(path.resolve()), None) if path.is_file() else (None, f"{what} {image} does not exist")


def _local_or_hub(reference: str, what: str) -> tuple[str | None, str | None]:
    path = Path(reference).expanduser()
    if path.exists():
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
    elif listed is not None:
        extra.append(rows_where(pc.is_valid(listed)))  # not a list: entries are whatever Python iterates
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
    text, tags = split_lora_tags(prompt) if prompt else (prompt, [])
    loras = [_lora_entry(entry, n, resolver, report) for entry in entries or []]
    loras += [_tag_entry(name, weight, n, resolver, report) for name, weight in tags]
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
    weights = _number_or(weight, 1.0, len(values))
    entries = pa.StructArray.from_arrays([resolved, weights], names=["path", "weight"])
    return entries, pc.or_(pc.invert(usable), failed)


def _number_or(values: pa.Array | None, default: float, count: int) -> pa.Array:
    if values is None:
        return pa.repeat(pa.scalar(default), count)
    return pc.fill_null(values.cast(pa.float64(), safe=False), default)


def _lora_entry(entry: Any, n: int, resolver: Resolver, report: Report) -> dict | None:
    if not isinstance(entry, dict) or not entry.get("path"):
        report("loras", n, "each entry needs a 'path' (and optionally a 'weight')")
        return None
    weight = 1.0 if entry.get("weight") is None else float(entry["weight"])
    return _resolved_lora(str(entry["path"]), weight, "loras", n, resolver, report)


def _tag_entry(name: str, weight: str | None, n: int, resolver: Resolver, report: Report) -> dict | None:
    try:
        value = 1.0 if weight in (None, "") else float(weight)
    except ValueError:
        report("prompt", n, f"<lora:{name}:{weight}> has a weight that is not a number; write e.g. <lora:{name}:0.8>")
        return None
    return _resolved_lora(name, value, "prompt", n, resolver, report)


def _resolved_lora(name: str, weight: float, column: str, n: int, resolver: Resolver, report: Report):
    path, problem = resolver.lora(name)
    if problem:
        report(column, n, problem)
        return None
    return {"path": path, "weight": weight}


def normalize_controlnets(table: pa.Table, resolver: Resolver, report: Report) -> pa.Array:
    """A CONTROLNET_TYPE array from the `controlnets` list column or the simple single-ControlNet columns."""
    names = table.column_names
    simple = [c for c in SIMPLE_CONTROLNET_COLUMNS if c in names]
    if "controlnets" in names and simple:
        report(simple[0], -1, "use either the 'controlnets' list column or the simple columns, not both")
        return pa.nulls(table.num_rows, CONTROLNET_TYPE)
    listed = table.column("controlnets") if "controlnets" in names else _from_simple(table)
    entries: Entries | None = None
    values = None
    if listed is None:
        py_rows: list[int] = []
    elif is_list(listed.type):
        entries = entries_of(listed)
        values, failed = _resolved_controlnets(entries.values, resolver)
        py_rows = rows_of(entries, failed)
    else:
        py_rows = rows_where(pc.is_valid(listed)).to_pylist()  # not a list: entries are whatever Python iterates
    rows = pc.take(listed, pa.array(py_rows, pa.int64())).to_pylist() if py_rows else []
    py_lists = [[x for x in (_controlnet_entry(entry, n, resolver, report) for entry in row or []) if x]
                for n, row in zip(py_rows, rows)]
    return assemble(table.num_rows, CONTROLNET_TYPE, entries, values, py_rows, py_lists)


def _from_simple(table: pa.Table) -> pa.Array | None:
    """The simple columns as a list column: one entry where `controlnet` is set, none elsewhere."""
    if "controlnet" not in table.column_names:
        return None
    parts = [one_chunk(table.column(c)) if c in table.column_names else pa.nulls(table.num_rows)
             for c in SIMPLE_CONTROLNET_COLUMNS]
    model = parts[0]
    if is_text(model.type):
        has = pc.fill_null(pc.not_equal(model.cast(pa.string()), ""), False)
    else:
        has = pa.array([bool(m) for m in model.to_pylist()], pa.bool_())
    entries = pc.filter(pa.StructArray.from_arrays(parts, names=["model", "image", "scale"]), has)
    return pa.ListArray.from_arrays(offsets_of(has.cast(pa.int64())), entries)


def _resolved_controlnets(values: pa.Array, resolver: Resolver) -> tuple[pa.Array | None, pa.Array]:
    """Resolved (model, image, scale) entries and which entries failed; entries of unexpected types fail here
    and are judged in Python."""
    model, image, scale = (struct_field(values, name) for name in ("model", "image", "scale"))
    if model is None or image is None or not (is_text(model.type) and is_text(image.type)) or (
            scale is not None and not is_number(scale.type)):
        return None, pa.repeat(pa.scalar(True), len(values))
    model, image = model.cast(pa.string()), image.cast(pa.string())
    scales = _number_or(scale, 1.0, len(values))
    usable = pc.and_(pc.and_(pc.not_equal(model, ""), pc.not_equal(image, "")), pc.invert(pc.less(scales, 0.0)))
    usable = pc.fill_null(usable, False)
    unset = pa.scalar(None, pa.string())
    models, model_failed = by_distinct(pc.if_else(usable, model, unset), resolver.controlnet)
    images, image_failed = by_distinct(pc.if_else(usable, image, unset), resolver.image)
    entries = pa.StructArray.from_arrays([models, images, scales], names=["model", "image", "scale"])
    return entries, pc.or_(pc.invert(usable), pc.or_(model_failed, image_failed))


def _controlnet_entry(entry: Any, n: int, resolver: Resolver, report: Report) -> dict | None:
    if not isinstance(entry, dict) or not entry.get("model") or not entry.get("image"):
        report("controlnets", n, "each ControlNet needs a 'model' and an 'image' (and optionally a 'scale')")
        return None
    scale = 1.0 if entry.get("scale") is None else float(entry["scale"])
    if scale < 0:
        report("controlnets", n, f"scale {scale} is negative; use a value >= 0")
        return None
    model, problem = resolver.controlnet(str(entry["model"]))
    image, image_problem = resolver.image(str(entry["image"]))
    for issue in (problem, image_problem):
        if issue:
            report("controlnets", n, issue)
    return None if problem or image_problem else {"model": model, "image": image, "scale": scale}
