"""Per-row LoRA and ControlNet columns: inline <lora:...> tags, list normalization, name lookup, local checks."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

LORA_TYPE = pa.list_(pa.struct([("path", pa.string()), ("weight", pa.float64())]))
CONTROLNET_TYPE = pa.list_(pa.struct([("model", pa.string()), ("image", pa.string()), ("scale", pa.float64())]))
# A1111 syntax: <lora:name> or <lora:name:weight>.
LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^>]*))?>")
SIMPLE_CONTROLNET_COLUMNS = ("controlnet", "control_image", "controlnet_scale")
CONSUMED_COLUMNS = ("loras", "controlnets") + SIMPLE_CONTROLNET_COLUMNS
REMOTE_PREFIXES = ("s3://", "http://", "https://")
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
        if name.startswith("s3://"):
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
            resolved, problem = (model, None) if model.startswith("s3://") else _local_or_hub(model, "ControlNet")
            if resolved and Path(resolved).is_dir() and not (Path(resolved) / "config.json").is_file():
                resolved, problem = None, f"ControlNet {model!r} has no config.json; pass a diffusers ControlNet folder"
            self._cache[key] = (resolved, problem)
        return self._cache[key]

    def image(self, image: str) -> tuple[str | None, str | None]:
        if image.startswith(REMOTE_PREFIXES):
            return image, None
        path = Path(image).expanduser()
        return (str(path.resolve()), None) if path.is_file() else (None, f"control image {image} does not exist")


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


def normalize_loras(table: pa.Table, prompts: list[str | None], resolver: Resolver, report: Report):
    """(cleaned prompts, LORA_TYPE array): list column entries first, then the prompt's tags."""
    listed = table.column("loras").to_pylist() if "loras" in table.column_names else [None] * table.num_rows
    cleaned, out = [], []
    for n, (prompt, entries) in enumerate(zip(prompts, listed)):
        text, tags = split_lora_tags(prompt) if prompt else (prompt, [])
        cleaned.append(text)
        loras = [_lora_entry(entry, n, resolver, report) for entry in entries or []]
        loras += [_tag_entry(name, weight, n, resolver, report) for name, weight in tags]
        out.append([x for x in loras if x is not None])
    return cleaned, pa.array(out, LORA_TYPE)


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
    rows = table.column("controlnets").to_pylist() if "controlnets" in names else _from_simple(table)
    out = []
    for n, entries in enumerate(rows):
        resolved = [_controlnet_entry(entry, n, resolver, report) for entry in entries or []]
        out.append([x for x in resolved if x is not None])
    return pa.array(out, CONTROLNET_TYPE)


def _from_simple(table: pa.Table) -> list[list[dict]]:
    if "controlnet" not in table.column_names:
        return [[] for _ in range(table.num_rows)]

    def column(name):
        return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows

    return [[{"model": m, "image": i, "scale": s}] if m else []
            for m, i, s in zip(column("controlnet"), column("control_image"), column("controlnet_scale"))]


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
